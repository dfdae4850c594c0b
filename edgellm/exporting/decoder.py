"""Causal LM -> one decoder ONNX with a KV cache (past / present), checked against torch; OpenVINO IR.

The graph is written here for the Llama family (llama, mistral, qwen2: RMSNorm, rotary positions, grouped-query
attention, gated MLP) from the Hugging Face model's own modules, so that every step is explicit and traces into a
small, fully dynamic graph:

    inputs   input_ids (B, T) int64, attention_mask (B, P+T) int64, position_ids (B, T) int64,
             num_logits_to_keep () int64, past_key_values.{i}.key / .value (B, KV, P, D) float32
    outputs  logits (B, K, vocab) for the last K = num_logits_to_keep positions,
             present.{i}.key / .value (B, KV, P+T, D)

Prefill feeds P = 0 (empty past) and asks for 1 logit row (or T rows to score text); each decode step feeds
T = 1. The same file runs without a cache by always feeding an empty past and the whole sequence.

    export = write_decoder_models(student, tok, folder, prompts=[tok("Hello").input_ids], context_length=2048)
    export.entries     # onnx-fp32 (the fused graph of fused_decoder.py) and openvino-fp32, each checked vs torch

8 / 4-bit weights and INT8 of these graphs are the quantize stage's (`edgellm.quantize.decoder`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgellm.artifact import Manifest, ModelEntry
from edgellm.errors import ConfigError, ExportError, ExportMismatchError
from edgellm.exporting.onnx import torch_export
from edgellm.recipe import CausalLMConfig
from edgellm.runtime.generate import token_log_probs

__all__ = [
    "EXPORTABLE_DECODERS",
    "DecoderSpec",
    "DecoderExport",
    "decoder_spec",
    "export_decoder_onnx",
    "check_decoder",
    "check_entry",
    "entry_generator",
    "runtime_perplexity",
    "check_prompts",
    "torch_references",
    "TorchReference",
    "decoder_to_openvino",
    "generation_config",
    "plain_inputs",
    "write_decoder_models",
    "decoder_manifest",
    "context_length_for",
]

log = logging.getLogger(__name__)

EXPORTABLE_DECODERS = ("llama", "mistral", "qwen2")  # architectures whose graph `DecoderWrapper` writes
DEFAULT_ATOL = CausalLMConfig.logits_atol  # FP32 logits vs torch (logits are O(10); float32 summation order differs)
DEFAULT_CONTEXT = CausalLMConfig.context_length  # tokens, when the model allows more
GREEDY_CHECK_STEPS = 32


@dataclass
class DecoderSpec:
    """Input / output names and KV-cache layout of an exported decoder (also written to the manifest)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    past_names: list[str] = field(default_factory=list)  # past_key_values.{i}.key, .value, in layer order
    present_names: list[str] = field(default_factory=list)

    def kv_cache(self) -> dict[str, Any]:
        """The manifest's `generation.kv_cache` entry."""
        return {
            "layout": "batch, kv_heads, sequence, head_dim",
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "dtype": "float32",
            "past": self.past_names,
            "present": self.present_names,
        }


def decoder_spec(model: Any) -> DecoderSpec:
    """Names and shapes of the decoder graph for `model` (refuses architectures the wrapper cannot write)."""
    cfg = model.config
    if cfg.model_type not in EXPORTABLE_DECODERS:
        raise ExportError(
            f"decoder export writes the graph for {list(EXPORTABLE_DECODERS)}; {cfg.model_type!r} is not one of them"
        )
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    layers = int(cfg.num_hidden_layers)
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return DecoderSpec(
        num_layers=layers,
        num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab_size=int(cfg.vocab_size),
        inputs=["input_ids", "attention_mask", "position_ids", "num_logits_to_keep", *past],
        outputs=["logits", *present],
        past_names=past,
        present_names=present,
    )


def _check_supported(model: Any, context_length: int) -> None:
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and int(window) < context_length:
        raise ExportError(
            f"{cfg.model_type} uses sliding-window attention ({window} tokens) but the export's context is "
            f"{context_length}; export with context_length <= {window}"
        )
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    if kind == "dynamic":
        raise ExportError("dynamic RoPE scaling changes with the sequence length and cannot be exported as a graph")
    if getattr(model.model.layers[0].self_attn, "q_norm", None) is not None:
        raise ExportError(f"{cfg.model_type} normalises q / k per head (q_norm); the decoder wrapper does not")
    mlp = model.model.layers[0].mlp
    if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")) or \
            getattr(mlp.gate_proj, "bias", None) is not None:
        raise ExportError(f"{cfg.model_type}: the decoder wrapper needs a gated MLP (gate_proj, up_proj, down_proj)")


def _wrapper(model: Any) -> Any:
    import torch

    spec = decoder_spec(model)
    base = model.model
    attn0 = base.layers[0].self_attn
    heads = int(model.config.num_attention_heads)
    kv = spec.num_kv_heads
    rep = heads // kv
    dim = spec.head_dim
    scaling = float(getattr(attn0, "scaling", dim**-0.5))

    def rotate_half(x: Any) -> Any:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    class DecoderWrapper(torch.nn.Module):
        """Positional inputs in `spec.inputs` order; returns (logits, *present).

        q / k / v projections run as one MatMul and gate / up as another (weights concatenated once here): fewer,
        larger matrix products, which is what a CPU decoding one token at a time is fastest at."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.qkv = torch.nn.ParameterList()
            self.qkv_bias: list[Any] = []
            self.gate_up = torch.nn.ParameterList()
            for layer in base.layers:
                a, mlp = layer.self_attn, layer.mlp
                self.qkv.append(torch.nn.Parameter(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                                                   requires_grad=False))
                bias = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
                self.qkv_bias.append(torch.cat(bias).detach() if all(b is not None for b in bias) else None)
                self.gate_up.append(torch.nn.Parameter(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                                                       requires_grad=False))

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, keep: Any, *past: Any) -> Any:
            x = base.embed_tokens(input_ids)  # (B, T, C)
            bsz, seq = input_ids.shape[0], input_ids.shape[1]
            cos, sin = base.rotary_emb(x, position_ids)  # (B, T, D)
            cos = cos.unsqueeze(1)  # (B, 1, T, D)
            sin = sin.unsqueeze(1)
            plen = past[0].shape[2]
            key_pos = torch.arange(plen + seq, dtype=torch.int64)  # (S,)
            query_pos = torch.arange(seq, dtype=torch.int64) + plen  # (T,)
            causal = key_pos[None, :] <= query_pos[:, None]  # (T, S)
            allowed = causal[None, :, :] & attention_mask[:, None, :].bool()  # (B, T, S)
            neg = torch.finfo(torch.float32).min
            bias = torch.where(allowed, 0.0, neg).to(torch.float32)[:, None, None, :, :]  # (B, 1, 1, T, S)
            present = []
            for i, layer in enumerate(base.layers):
                attn = layer.self_attn
                h = layer.input_layernorm(x)
                qkv = torch.nn.functional.linear(h, self.qkv[i], self.qkv_bias[i])  # (B, T, (H + 2 KV) D)
                q, k, v = qkv.split([heads * dim, kv * dim, kv * dim], dim=-1)
                q = q.reshape(bsz, seq, heads, dim).transpose(1, 2)  # (B, H, T, D)
                k = k.reshape(bsz, seq, kv, dim).transpose(1, 2)  # (B, KV, T, D)
                v = v.reshape(bsz, seq, kv, dim).transpose(1, 2)
                q = q * cos + rotate_half(q) * sin
                k = k * cos + rotate_half(k) * sin
                k = torch.cat([past[2 * i], k], dim=2)  # (B, KV, S, D)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                present += [k, v]
                q5 = q.reshape(bsz, kv, rep, seq, dim)  # grouped-query: no copy of K / V per head
                scores = torch.matmul(q5, k.unsqueeze(2).transpose(-1, -2)) * scaling + bias  # (B, KV, rep, T, S)
                probs = torch.softmax(scores, dim=-1)
                out = torch.matmul(probs, v.unsqueeze(2))  # (B, KV, rep, T, D)
                out = out.reshape(bsz, heads, seq, dim).transpose(1, 2).reshape(bsz, seq, heads * dim)
                x = x + attn.o_proj(out)
                gate, up = torch.nn.functional.linear(layer.post_attention_layernorm(x), self.gate_up[i]).chunk(2, -1)
                x = x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)  # (B, T, C)
            rows = torch.arange(seq - keep, seq, dtype=torch.int64)  # the last `keep` positions
            x = base.norm(torch.index_select(x, 1, rows))
            logits = model.lm_head(x).float()  # (B, K, V)
            return (logits, *present)

    return DecoderWrapper().eval()


def _sample_inputs(spec: DecoderSpec, *, batch: int = 1, seq: int = 3, past: int = 2) -> tuple[Any, ...]:
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).unsqueeze(0).repeat(batch, 1)
    keep = torch.tensor(seq, dtype=torch.int64)
    kv = [torch.randn(batch, spec.num_kv_heads, past, spec.head_dim, generator=gen) for _ in spec.past_names]
    return (ids, mask, pos, keep, *kv)


def export_decoder_onnx(model: Any, path: Path, *, context_length: int = DEFAULT_CONTEXT) -> DecoderSpec:
    """Write `model` as one decoder ONNX with KV-cache inputs / outputs (weights inside the file when < 2 GB)."""
    spec = decoder_spec(model)
    _check_supported(model, context_length)
    wrapper = _wrapper(model)
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "kept"},
    }
    for name in spec.past_names:
        dynamic[name] = {0: "batch", 2: "past_sequence"}
    for name in spec.present_names:
        dynamic[name] = {0: "batch", 2: "total_sequence"}
    if sum(p.numel() for p in model.parameters()) * 4 > 1.8e9:
        raise ExportError(f"{type(model).__name__} has over 1.8 GB of FP32 weights; this exporter writes one file "
                          "(protobuf's 2 GB limit)")
    torch_export(wrapper, _sample_inputs(spec), path, inputs=spec.inputs, outputs=spec.outputs, dynamic=dynamic,
                 what=type(model).__name__)
    return spec


# -- checking an exported decoder against torch, through the runtime's own Generator ---------------------------


@dataclass
class TorchReference:
    """Torch's greedy continuation of one prompt and its logits at every position of prompt + continuation."""

    prompt: list[int]
    tokens: list[int]  # greedy, never stopping at EOS
    logits: np.ndarray  # (len(prompt) + len(tokens), V) float64


def torch_references(model: Any, prompts: Sequence[list[int]], steps: int = GREEDY_CHECK_STEPS, *,
                     context_length: int | None = None) -> list[TorchReference]:
    """Greedy tokens (HF KV cache) and, for the check, one no-cache forward over prompt + continuation.

    With `context_length`, prompts are cut to half of it and the steps to what still fits."""
    import torch

    refs = []
    with torch.no_grad():
        for p in prompts:
            if context_length is not None:
                p = list(p)[: max(1, context_length // 2)]
                steps = min(steps, context_length - len(p))
            out = model(torch.tensor([p]), use_cache=True)
            cache = out.past_key_values
            tokens: list[int] = []
            for _ in range(steps):
                tokens.append(int(torch.argmax(out.logits[0, -1])))
                out = model(torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            logits = model(torch.tensor([list(p) + tokens]), use_cache=False).logits[0].double().numpy()
            refs.append(TorchReference(list(p), tokens, logits))
    return refs


def check_prompts(tokenizer: Any, texts: Sequence[str], *, count: int = 8, length: int = 64) -> list[list[int]]:
    """The prompts an export is checked on: the first `count` texts' token ids, cut to `length` (empty ones
    skipped; a single token 0 when none is left)."""
    prompts = [ids for ids in (tokenizer(t).input_ids[:length] for t in texts[:count]) if ids]
    return prompts or [[0]]


def check_decoder(
    references: Sequence[TorchReference],
    generator: Any,
    *,
    atol: float = DEFAULT_ATOL,
    label: str = "decoder",
    exact: bool = True,
) -> dict[str, Any]:
    """Compare an exported decoder, run by the runtime's `Generator`, with torch (`torch_references`).

    For each prompt: the greedy tokens through the KV cache must equal torch's, and the logits of every position
    of prompt + torch's continuation must agree within `atol` (no cache). With `exact=False` (INT8) nothing
    raises; the statistics (max logit difference, share of greedy tokens that agree before the first
    difference, perplexity ratio on those sequences) are returned for the manifest.
    """
    if not references:
        raise ConfigError("no prompts to check the decoder export with")
    max_diff = 0.0
    agree = total = count = 0
    nll_ref = nll_got = 0.0
    mismatch = None
    for ref in references:
        got_tokens = list(generator.tokens(ref.prompt, len(ref.tokens), ignore_eos=True))
        same = next((i for i, (a, b) in enumerate(zip(got_tokens, ref.tokens)) if a != b), len(ref.tokens))
        agree += same
        total += len(ref.tokens)
        if same < len(ref.tokens) and mismatch is None:
            mismatch = (same, ref.tokens[same], got_tokens[same] if same < len(got_tokens) else None)
        seq = ref.prompt + ref.tokens
        got = generator.logits(seq).astype(np.float64)
        max_diff = max(max_diff, float(np.abs(ref.logits - got).max()))
        targets = np.asarray(seq[1:])
        nll_ref -= float(token_log_probs(ref.logits[:-1], targets).sum())
        nll_got -= float(token_log_probs(got[:-1], targets).sum())
        count += len(targets)
    stats: dict[str, Any] = {
        "max_abs_diff": max_diff,
        "greedy_agreement": agree / max(total, 1),
        "greedy_steps": max(len(r.tokens) for r in references),
        "prompts": len(references),
        "perplexity_ratio": float(np.exp((nll_got - nll_ref) / max(count, 1))),
        "tolerance": atol if exact else None,
    }
    if exact:
        if not max_diff <= atol:  # also catches NaN
            raise ExportMismatchError(
                f"{label} differs from torch by max abs {max_diff:.3g} in the logits on {len(references)} real "
                f"prompts (tolerance {atol:g}); the export is wrong, not saved", max_abs_diff=max_diff, tolerance=atol)
        if mismatch is not None:
            raise ExportMismatchError(
                f"{label}: greedy tokens with the KV cache differ from torch at step {mismatch[0]} (torch "
                f"{mismatch[1]}, exported {mismatch[2]}); the export is wrong, not saved",
                max_abs_diff=max_diff, tolerance=atol)
    log.info("%s vs torch: max abs logit diff %.3g, greedy agreement %.3f", label, max_diff, stats["greedy_agreement"])
    return stats


# -- INT8 and OpenVINO -------------------------------------------------------------------------------------------


def decoder_to_openvino(onnx_path: Path, xml_path: Path, spec: DecoderSpec, *, stateful: bool) -> list[str]:
    """ONNX decoder -> OpenVINO IR (FP32 weights). With `stateful`, the KV cache becomes internal model state
    (ReadValue / Assign pairs): past / present leave the inputs and outputs, the batch is fixed to 1, and the
    runtime resets the state for each prompt (OpenVINO's own stateful-LLM form)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError("OpenVINO export needs the openvino package: pip install 'edgellm[openvino]'") from exc
    try:
        model = ov.convert_model(str(onnx_path))
        if stateful:
            from openvino._offline_transformations import apply_make_stateful_transformation

            shapes = {}
            for port in model.inputs:
                shape = port.get_partial_shape()
                if shape.rank.is_static and shape.rank.get_length() > 0:
                    shape[0] = 1  # the state's initial value needs a static batch
                shapes[port.get_any_name()] = shape
            model.reshape(shapes)
            apply_make_stateful_transformation(model, dict(zip(spec.past_names, spec.present_names)))
        from edgellm.exporting.openvino import save_ir

        save_ir(model, xml_path, compress_to_fp16=False)  # node names renumbered: the same bytes in any process
    except Exception as exc:
        raise ExportError(f"OpenVINO could not convert {onnx_path.name}: {exc}") from exc
    return [xml_path.name, xml_path.with_suffix(".bin").name]


# -- artifact ----------------------------------------------------------------------------------------------------


def generation_config(model: Any, tokenizer: Any, spec: DecoderSpec, *, context_length: int) -> dict[str, Any]:
    """The manifest's `generation` dict: stop tokens, special tokens, chat template, context, KV layout."""
    eos: list[int] = []
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        for tid in value if isinstance(value, (list, tuple)) else [value]:
            if tid is not None and int(tid) not in eos:
                eos.append(int(tid))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default") or next(iter(template.values()), None)
    pad = getattr(tokenizer, "pad_token_id", None)
    return {
        "context_length": int(context_length),
        "eos_token_ids": eos,
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "pad_token_id": int(pad) if pad is not None else (eos[0] if eos else 0),
        "special_tokens": {
            "bos_token": getattr(tokenizer, "bos_token", None),
            "eos_token": getattr(tokenizer, "eos_token", None),
        },
        "chat_template": template or None,
        "vocab_size": spec.vocab_size,
        "logits_to_keep_input": "num_logits_to_keep",
        "kv_cache": spec.kv_cache(),
    }


def context_length_for(model: Any, context_length: int | None) -> int:
    """The export's context: `context_length` checked against the model's limit (None: min(limit, default))."""
    limit = int(getattr(model.config, "max_position_embeddings", DEFAULT_CONTEXT) or DEFAULT_CONTEXT)
    if context_length is None:
        return min(limit, DEFAULT_CONTEXT)
    if not isinstance(context_length, int) or context_length < 2:
        raise ConfigError(f"context_length must be an int >= 2, not {context_length!r}")
    if context_length > limit:
        raise ConfigError(f"context_length {context_length} exceeds the model's max_position_embeddings {limit}")
    return context_length


def runtime_perplexity(generator: Any, sequences: Sequence[Sequence[int]]) -> dict[str, float]:
    """exp(mean NLL) over every predicted token of `sequences`, each scored on its own through the runtime."""
    total, count = 0.0, 0
    for ids in sequences:
        if len(ids) >= 2:
            lp = generator.log_probs(list(ids))
            total -= float(lp.sum())
            count += lp.size
    if count == 0:
        raise ConfigError("no held-out sequence of 2 or more tokens to measure perplexity on")
    return {"perplexity": float(np.exp(total / count)), "nll_per_token": total / count, "tokens": count}


def _size(folder: Path, files: Sequence[str]) -> int:
    return sum((folder / f).stat().st_size for f in files)


def entry_generator(folder: Path, entry: ModelEntry, generation: dict[str, Any], inputs: list[str]) -> Any:
    """The runtime's Generator over one model file of a staging folder (tokenizer.json already written)."""
    from edgellm.runtime.generate import Generator

    manifest = Manifest(task="text-generation", models=[entry], default_model=entry.name,
                        max_length=int(generation["context_length"]), inputs=inputs, generation=generation)
    if entry.backend == "openvino":
        from edgellm.runtime.openvino import OpenVINOBackend

        backend: Any = OpenVINOBackend(folder / entry.path, device="cpu", threads=None,
                                       options={"inference_precision": entry.inference_precision or "f32"})
    else:
        from edgellm.runtime.ort import OrtBackend

        backend = OrtBackend(folder / entry.path, device="cpu", threads=None, options={})
    return Generator(folder, manifest, entry, backend)


def plain_inputs(generation: dict[str, Any]) -> list[str]:
    """Input names of the plain decoder graph (`export_decoder_onnx`), from the manifest's `generation` dict."""
    return ["input_ids", "attention_mask", "position_ids", "num_logits_to_keep", *generation["kv_cache"]["past"]]


def check_entry(folder: Path, entry: ModelEntry, generation: dict[str, Any], inputs: list[str],
                references: Sequence[TorchReference], *, exact: bool, label: str, atol: float = DEFAULT_ATOL,
                eval_sequences: Sequence[Sequence[int]] = ()) -> ModelEntry:
    """`entry` (a model file in `folder`) against torch's `references` (`check_decoder`), its size, and with
    `eval_sequences` its perplexity on them through the runtime; the numbers go into `entry.metrics`."""
    stats = check_decoder(references, entry_generator(folder, entry, generation, inputs), atol=atol, label=label,
                          exact=exact)
    entry.metrics = {"vs_torch": stats, "size_bytes": _size(folder, entry.files), **entry.metrics}
    if eval_sequences:
        ppl = runtime_perplexity(entry_generator(folder, entry, generation, inputs), eval_sequences)
        entry.metrics["perplexity"] = ppl["perplexity"]  # held-out text, through the runtime
        entry.metrics["perplexity_tokens"] = ppl["tokens"]
    return entry


@dataclass
class DecoderExport:
    """What `write_decoder_models` wrote: the FP32 models and what the quantize stage builds on."""

    generation: dict[str, Any]  # the manifest's generation dict
    inputs: list[str]  # input names of the ONNX Runtime model (fused or plain)
    entries: list[ModelEntry]  # onnx-fp32 and / or openvino-fp32
    plain: Path | None  # the plain-graph ONNX file (source of plain-graph INT8), when kept
    references: list[TorchReference]  # torch's greedy tokens and logits the models were checked against


def write_decoder_models(
    model: Any,
    tokenizer: Any,
    folder: Path,
    *,
    prompts: Sequence[list[int]],
    formats: Sequence[str] = ("onnx", "openvino"),
    graph: str = "fused",
    context_length: int,
    atol: float = DEFAULT_ATOL,
    stateful: bool = True,
    eval_sequences: Sequence[Sequence[int]] = (),
    keep_plain: Path | None = None,
) -> DecoderExport:
    """Write the FP32 decoder models of an artifact into `folder` (which already holds tokenizer.json).

    onnx-fp32 is the fused ONNX Runtime graph (`graph="fused"`, `edgellm.exporting.fused_decoder`; the plain graph
    when the architecture has no fused form or `graph="plain"`); openvino-fp32 is an IR of the plain graph
    (stateful: the KV cache as internal state). Each is checked against torch (logits within `atol`, identical
    greedy tokens for 32 cached steps) and, with `eval_sequences` (held-out token ids), its perplexity on them is
    measured through the runtime. With `keep_plain` (a path outside `folder`), the plain graph is kept there for
    the quantize stage's plain-graph INT8 models. Quantized models are `edgellm.quantize.decoder`'s job.
    """
    from edgellm.exporting.fused_decoder import fused_decoder_supported, write_fused_decoder

    unknown = [f for f in formats if f not in ("onnx", "openvino")]
    if unknown or not formats:
        raise ConfigError(f"unknown export format(s) {unknown or list(formats)}; choose from ['onnx', 'openvino']")
    if graph not in ("fused", "plain"):
        raise ConfigError(f"unknown decoder graph {graph!r}; choose from ['fused', 'plain']")
    plain = folder / ("model.onnx" if graph == "plain" else "model_plain.onnx")
    spec = export_decoder_onnx(model, plain, context_length=context_length)
    generation = generation_config(model, tokenizer, spec, context_length=context_length)
    inputs = list(spec.inputs)
    references = torch_references(model, prompts, context_length=context_length)

    def checked(entry: ModelEntry, label: str, names: list[str]) -> ModelEntry:
        return check_entry(folder, entry, generation, names, references, exact=True, label=label, atol=atol,
                           eval_sequences=eval_sequences)

    reason = fused_decoder_supported(model) if graph == "fused" else "graph: plain was asked for"
    fused_kv: dict[str, Any] = {"graph": "plain", "shared_buffer": False}
    onnx_inputs = inputs
    if reason is None:
        fp32 = folder / "model.onnx"
        onnx_inputs = write_fused_decoder(model, fp32, context_length=context_length)
        fused_kv = {"graph": "fused", "shared_buffer": True}
    else:
        fp32 = plain
        if graph == "fused":
            log.warning("writing the plain decoder graph: %s", reason)
            fused_kv["fused_unavailable"] = reason
    generation["kv_cache"] = {**generation["kv_cache"], "graph": "plain", "shared_buffer": False}
    entries = []
    if "onnx" in formats:
        entries.append(checked(ModelEntry(name="onnx-fp32", path=fp32.name, backend="onnxruntime", precision="fp32",
                                          kv_cache=dict(fused_kv)), "ONNX FP32 decoder", onnx_inputs))
    if "openvino" in formats:
        xml = folder / "openvino_model.xml"
        files = decoder_to_openvino(plain, xml, spec, stateful=stateful)
        entries.append(checked(ModelEntry(name="openvino-fp32", path=xml.name, backend="openvino", precision="fp32",
                                          files=files, inference_precision="f32", metrics={"stateful": stateful}),
                               "OpenVINO FP32 decoder", inputs))
    if "onnx" not in formats and fp32 != plain:
        fp32.unlink()
    kept = None
    if keep_plain is not None:
        import shutil

        keep_plain.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plain, keep_plain)
        kept = keep_plain
    if plain != fp32 or "onnx" not in formats:
        plain.unlink()  # only the source of the OpenVINO IR (and of the quantize stage's plain INT8, kept above)
    return DecoderExport(generation, onnx_inputs if "onnx" in formats else inputs, entries, kept, references)


def decoder_manifest(model: Any, export: DecoderExport, *, context_length: int, source: str) -> Manifest:
    """The text-generation manifest of a decoder export (default model: the first entry; the quantize and
    evaluate stages choose again)."""
    from edgellm.models import source_record

    return Manifest(
        task="text-generation",
        models=list(export.entries),
        default_model=export.entries[0].name,
        max_length=context_length,
        inputs=export.inputs,
        generation=export.generation,
        source=source_record(model, source),
    )


