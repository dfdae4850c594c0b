"""Encoder -> ONNX (dynamic batch and sequence, or static shapes for NPU-style targets)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

from edgellm.errors import ExportError

__all__ = ["ENCODER_OUTPUTS", "encoder_input_names", "export_encoder_onnx", "EncoderWrapper", "cls_only_supported"]

log = logging.getLogger(__name__)

ENCODER_OUTPUTS = {"text-classification": "logits", "feature-extraction": "last_hidden_state"}
OPSET = 17


def encoder_input_names(model: Any) -> list[str]:
    """input_ids, attention_mask, and token_type_ids when the model takes them and has a segment embedding."""
    names = ["input_ids", "attention_mask"]
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in params and int(getattr(model.config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


# model type -> attribute of the classifier holding the bare encoder, for the classifiers whose head reads the last
# layer at position 0 only (BERT's pooler, RoBERTa's / ELECTRA's classification head, DistilBERT's pre_classifier)
_CLS_ONLY_BASES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta",
                   "electra": "electra", "distilbert": "distilbert"}


def cls_only_supported(model: Any, task: str) -> bool:
    """Whether the export can run the last layer for the [CLS] position only: a classifier of a family whose head
    reads position 0 of the last layer and nothing else does (edgellm.families lists them), with absolute
    positions and no cross-attention."""
    from edgellm.families import family_of

    config = getattr(model, "config", None)
    family = family_of(config) if config is not None else None
    base = getattr(model, _CLS_ONLY_BASES.get(getattr(config, "model_type", ""), ""), None)
    if task != "text-classification" or family is None or family.cls_only is not None or base is None:
        return False
    if config.model_type == "distilbert":
        return len(base.transformer.layer) > 0 and hasattr(model, "pre_classifier")
    return (getattr(config, "position_embedding_type", "absolute") == "absolute"
            and not getattr(config, "is_decoder", False) and not getattr(config, "add_cross_attention", False)
            and (config.model_type != "bert" or getattr(base, "pooler", None) is not None)
            and hasattr(model, "classifier") and len(getattr(getattr(base, "encoder", None), "layer", [])) > 0)


class EncoderWrapper:
    """Turns a HF encoder into a module with positional int64 inputs and one tensor output.

    `cls_only`: for classifiers where `cls_only_supported`, the last layer computes its attention query, attention
    output, layer norms and FFN for position 0 only (keys and values still for every token): the logits are the
    same (the export is checked against the unwrapped model), and that layer's cost falls by ~2/3 at 128 tokens.
    """

    def __new__(cls, model: Any, task: str, input_names: list[str], *, cls_only: bool = False) -> Any:
        import torch

        output = ENCODER_OUTPUTS[task]
        if cls_only and not cls_only_supported(model, task):
            raise ExportError(f"{type(model).__name__} cannot be exported with a [CLS]-only last layer")

        class _Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                kwargs = dict(zip(input_names, args))
                if cls_only:
                    return _cls_only_logits(self.model, **kwargs)
                out = self.model(**kwargs, return_dict=True)
                return out[output]

        return _Wrapped().eval()


def _cls_only_logits(model: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
    """A classifier's logits with the last layer evaluated at position 0 only (its self-attention's query from the
    [CLS] state, keys and values from all states)."""
    if model.config.model_type == "distilbert":
        return _distilbert_cls_only_logits(model, input_ids, attention_mask)
    base = getattr(model, _CLS_ONLY_BASES[model.config.model_type])
    hidden = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    if hasattr(base, "embeddings_project"):  # ELECTRA with embedding_size != hidden_size
        hidden = base.embeddings_project(hidden)
    mask = base.get_extended_attention_mask(attention_mask, input_ids.shape)  # (B, 1, 1, T), additive
    *layers, last = base.encoder.layer
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask)[0]
    first = hidden[:, :1]  # (B, 1, H)
    context = last.attention.self(first, attention_mask=mask, encoder_hidden_states=hidden)[0]
    state = last.feed_forward_chunk(last.attention.output(context, first))  # (B, 1, H)
    if model.config.model_type == "bert":
        return model.classifier(model.dropout(base.pooler(state)))
    return model.classifier(state)  # RoBERTa / ELECTRA heads read state[:, 0]


def _distilbert_cls_only_logits(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """DistilBERT: the blocks but the last through the model itself (its own mask handling), the last block's
    attention called with a one-position query (the eager kernel, which takes separate query and key lengths)."""
    import torch
    from transformers.models.distilbert.modeling_distilbert import MultiHeadSelfAttention

    transformer = model.distilbert.transformer
    blocks = transformer.layer
    *layers, last = blocks
    transformer.layer = torch.nn.ModuleList(layers)
    try:
        hidden = model.distilbert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    finally:
        transformer.layer = blocks
    first = hidden[:, :1]
    context = MultiHeadSelfAttention.forward(last.attention, first, hidden, hidden, attention_mask)[0]
    state = last.sa_layer_norm(context + first)
    state = last.output_layer_norm(last.ffn(state) + state)  # (B, 1, H)
    pooled = torch.nn.ReLU()(model.pre_classifier(state[:, 0]))
    return model.classifier(model.dropout(pooled))


def torch_export(module: Any, args: tuple[Any, ...], path: Path, *, inputs: list[str], outputs: list[str],
                 dynamic: dict[str, dict[int, str]] | None, what: str) -> None:
    """torch.onnx.export (TorchScript tracer, opset OPSET, constant folding) of `module` on `args` into `path`;
    any failure is an ExportError naming `what`. The tracer's warnings (shape-dependent control flow that the
    wrappers keep out of the graph on purpose) are silenced."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for {what}: {exc}") from exc


def export_encoder_onnx(
    model: Any,
    path: Path,
    *,
    task: str,
    sample: dict[str, Any],
    static_shape: tuple[int, int] | None = None,
    cls_only: bool = False,
) -> list[str]:
    """Export `model` to `path` (single file, weights inside). Returns the input names in graph order.

    Args:
        sample: tokenized example inputs (torch int64 tensors), used for tracing.
        static_shape: (batch, seq) to fix every input's shape; None keeps batch and sequence dynamic.
        cls_only: a BERT classifier's last layer for position 0 only (`EncoderWrapper`); same logits.
    """
    import torch

    if task not in ENCODER_OUTPUTS:
        raise ExportError(f"encoder export supports {sorted(ENCODER_OUTPUTS)}, not {task!r}")
    names = encoder_input_names(model)
    args = []
    for name in names:
        tensor = sample.get(name)
        if tensor is None:
            tensor = torch.zeros_like(sample["input_ids"])
        if static_shape is not None:
            tensor = _fit(tensor, static_shape)
        args.append(tensor.to(torch.int64))
    output = ENCODER_OUTPUTS[task]
    dynamic = None
    if static_shape is None:
        dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
        dynamic[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    wrapped = EncoderWrapper(model, task, names, cls_only=cls_only)
    with _traceable(model):
        torch_export(wrapped, tuple(args), path, inputs=names, outputs=[output], dynamic=dynamic,
                     what=type(model).__name__)
    return names


@contextlib.contextmanager
def _traceable(model: Any) -> Iterator[None]:
    """DeBERTa-v2/v3's `build_rpos` is TorchScript-scripted, so the tracer writes its `if` as an ONNX If node with
    outputs of dynamic rank, which OpenVINO's CPU plugin cannot compile. In self-attention the query and key
    lengths are always equal, so the branch is the same for every input: for the export it is replaced by the
    same code in plain Python, which the tracer resolves (the export is checked against torch as always)."""
    if getattr(getattr(model, "config", None), "model_type", None) != "deberta-v2":
        yield
        return
    from transformers.models.deberta_v2 import modeling_deberta_v2 as deberta

    def build_rpos(query_layer: Any, key_layer: Any, relative_pos: Any, position_buckets: int,
                   max_relative_positions: int) -> Any:
        if key_layer.size(-2) != query_layer.size(-2):
            return deberta.build_relative_position(key_layer, key_layer, bucket_size=position_buckets,
                                                   max_position=max_relative_positions)
        return relative_pos

    scripted = deberta.build_rpos
    deberta.build_rpos = build_rpos
    try:
        yield
    finally:
        deberta.build_rpos = scripted


def _fit(tensor: Any, shape: tuple[int, int]) -> Any:
    """Pad or cut a (B, T) tensor to `shape` (pad rows by repeating the last, columns with zeros)."""
    import torch

    batch, seq = shape
    t = tensor[:, :seq]
    if t.shape[1] < seq:
        t = torch.cat([t, torch.zeros(t.shape[0], seq - t.shape[1], dtype=t.dtype)], dim=1)
    if t.shape[0] < batch:
        t = torch.cat([t, t[-1:].repeat(batch - t.shape[0], 1)], dim=0)
    return t[:batch]
