"""How much each attention unit, FFN neuron and layer matters: Taylor scores on task data, or weight magnitude.

Taylor (first order, Molchanov et al. 2019): put a mask m = 1 on a unit's output; removing the unit sets m = 0 and
changes the loss by about |dL/dm| = |sum over the unit's output weights of grad x weight|. That sum is read off the
output projection's gradient (a head's columns of the attention output matrix, a neuron's column of the FFN down
matrix), and |.| is summed over batches. Layers are scored by loss sensitivity: the loss increase when the layer is
skipped (absolute change). Magnitude (no data): the L2 norm of a unit's weights; layers from the top down (keeping a decoder's last).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from edgellm.errors import PruningError
from edgellm.prune.arch import Arch

__all__ = ["Scores", "taylor_scores", "magnitude_scores", "layer_sensitivity", "task_loss", "make_batches"]

log = logging.getLogger(__name__)

Batch = dict[str, Any]


@dataclass
class Scores:
    """Importance per layer: units[i] (A_i,), neurons[i] (F_i,), layers (L,) or None. Higher = keep."""

    units: list[Any]
    neurons: list[Any]
    layers: Any | None
    method: str
    batches: int = 0


def make_batches(
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | None = None,
    *,
    batch_size: int,
    max_length: int,
    limit: int | None = None,
) -> list[Batch]:
    """Tokenized torch batches (input_ids, attention_mask[, token_type_ids][, labels]) of at most `limit` batches."""
    import torch

    if labels is not None and len(labels) != len(texts):
        raise PruningError(f"{len(texts)} texts but {len(labels)} labels for importance scoring")
    if tokenizer.pad_token is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    batches: list[Batch] = []
    for start in range(0, len(texts), batch_size):
        if limit is not None and len(batches) >= limit:
            break
        chunk = [str(t) for t in texts[start : start + batch_size]]
        enc = tokenizer(chunk, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
        batch: Batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if labels is not None:
            batch["labels"] = torch.as_tensor(list(labels[start : start + batch_size]), dtype=torch.long)
        batches.append(batch)
    return batches


def _is_classifier(model: Any) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def _is_causal_lm(model: Any) -> bool:
    return type(model).__name__.endswith("ForCausalLM")


def task_loss(model: Any) -> Callable[[Any, Batch], Any] | None:
    """The loss Taylor scores differentiate: cross-entropy for classifiers (on the model's own predictions when a
    batch has no labels), next-token loss for causal LMs; None for models without a task loss (bare encoders)."""
    import torch

    if _is_classifier(model):

        def classify(m: Any, batch: Batch) -> Any:
            feeds = {k: v for k, v in batch.items() if k != "labels"}
            logits = m(**feeds).logits
            labels = batch.get("labels")
            if labels is None:
                labels = logits.detach().argmax(-1)
            return torch.nn.functional.cross_entropy(logits, labels)

        return classify
    if _is_causal_lm(model):

        def next_token(m: Any, batch: Batch) -> Any:
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            labels = ids.masked_fill(mask == 0, -100) if mask is not None else ids
            return m(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss

        return next_token
    return None


@contextlib.contextmanager
def _only_grad_for(model: Any, params: list[Any]) -> Iterator[None]:
    """Gradients for `params` only (the rest frozen), eval mode; flags and mode restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    wanted = {id(p) for p in params}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in wanted)
        model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        model.train(training)


def taylor_scores(arch: Arch, batches: Sequence[Batch], loss_fn: Callable[[Any, Batch], Any]) -> Scores:
    """|dL/dmask| per unit and neuron, summed over `batches` (see the module docstring)."""
    import torch

    layers = list(arch.layers())
    unit_w = [arch.unit_output_columns(layer) for layer in layers]
    ffn_w = [arch.ffn_output_weight(layer) for layer in layers]
    units = [torch.zeros(arch.attention_units(layer), dtype=torch.float64) for layer in layers]
    neurons = [torch.zeros(arch.ffn_width(layer), dtype=torch.float64) for layer in layers]
    with _only_grad_for(arch.model, [w for w, _ in unit_w] + ffn_w):
        for batch in batches:
            for w, _ in unit_w:
                w.grad = None
            for w in ffn_w:
                w.grad = None
            loss = loss_fn(arch.model, batch)
            if not torch.isfinite(loss):
                raise PruningError(f"the task loss is {loss.item()} on an importance batch; cannot score units")
            loss.backward()
            for i in range(len(layers)):
                w, width = unit_w[i]
                per_col = (w.grad * w).detach().sum(0).double()  # (A*width,)
                units[i] += per_col.view(-1, width).sum(1).abs()
                neurons[i] += (ffn_w[i].grad * ffn_w[i]).detach().sum(0).double().abs()  # (F,)
    return Scores(units=units, neurons=neurons, layers=None, method="taylor", batches=len(batches))


def magnitude_scores(arch: Arch) -> Scores:
    """Data-free: L2 norm of each unit's weights; each neuron's input-row norm x output-column norm."""
    import torch

    units, neurons = [], []
    with torch.no_grad():
        for layer in arch.layers():
            out, width = arch.unit_output_columns(layer)
            per_unit = []
            for u in range(arch.attention_units(layer)):
                sq = sum(float(r.double().pow(2).sum()) for r in arch.unit_input_rows(layer, u))
                sq += float(out[:, u * width : (u + 1) * width].double().pow(2).sum())
                per_unit.append(sq**0.5)
            units.append(torch.tensor(per_unit, dtype=torch.float64))
            rows = sum(w.double().pow(2).sum(1) for w in arch.ffn_input_weights(layer)).sqrt()  # (F,)
            cols = arch.ffn_output_weight(layer).double().pow(2).sum(0).sqrt()  # (F,)
            neurons.append(rows * cols)
    n = arch.num_layers()
    order = torch.arange(n, dtype=torch.float64)
    layer_scores = -order  # top layers go first (Sajjad et al. 2023; Gromov et al. 2024 for decoders)
    if arch.family == "decoder" and n > 1:
        layer_scores[-1] = float("inf")  # a decoder's last layer feeds the LM head: keep it
    return Scores(units=units, neurons=neurons, layers=layer_scores, method="magnitude")


def layer_sensitivity(arch: Arch, batches: Sequence[Batch], loss_fn: Callable[[Any, Batch], Any]) -> Any:
    """|loss change| when each layer alone is skipped, averaged over `batches` (L+1 forwards per batch).

    The absolute value: a layer whose removal moves the loss a lot either way changes the function a lot; a drop
    in loss on a few batches is not evidence that the layer is useless."""
    import torch

    layers = list(arch.layers())
    n = len(layers)
    base = 0.0
    without = [0.0] * n
    training = arch.model.training
    arch.model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                base += float(loss_fn(arch.model, batch))
                for i in range(n):
                    with _skipping(arch, layers, i):
                        without[i] += float(loss_fn(arch.model, batch))
    finally:
        arch.model.train(training)
    count = max(len(batches), 1)
    return torch.tensor([abs(w - base) / count for w in without], dtype=torch.float64)


@contextlib.contextmanager
def _skipping(arch: Arch, layers: list[Any], skip: int) -> Iterator[None]:
    """Run the model without layer `skip` (modules and config restored afterwards)."""
    config = arch.config
    n = config.num_hidden_layers
    pruned = getattr(config, "pruned_heads", None)
    saved = {k: list(v) for k, v in pruned.items()} if isinstance(pruned, dict) else None
    indices = {}
    for i, layer in enumerate(layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                indices[id(module)] = (module, module.layer_idx)
    try:
        arch.set_layers([layer for i, layer in enumerate(layers) if i != skip])
        config.num_hidden_layers = n - 1
        for new_index, layer in enumerate(arch.layers()):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_index
        yield
    finally:
        arch.set_layers(layers)
        if saved is not None:
            config.pruned_heads = saved
        config.num_hidden_layers = n
        for module, idx in indices.values():
            module.layer_idx = idx
