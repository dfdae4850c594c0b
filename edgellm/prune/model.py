"""Structured pruning of a loaded model in place (`prune_model`), its unit scores and its before / after numbers;
`edgellm.prune` re-exports it with the pieces (arch, importance, structured, unstructured) and the folder verb."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from edgellm.prune.arch import Arch, arch_for
from edgellm.prune.importance import Scores, layer_sensitivity, magnitude_scores, task_loss, taylor_scores
from edgellm.prune.structured import apply_plan, plan_for_budget, plan_pruning
from edgellm.prune.unstructured import magnitude_prune
from edgellm.recipe import PruneConfig

__all__ = ["PruneReport", "prune_model", "score_units", "model_stats", "FLOPS_SEQ_LEN"]

log = logging.getLogger(__name__)

FLOPS_SEQ_LEN = 128  # sequence length at which FLOPs per token are estimated in reports


@dataclass
class PruneReport:
    """What pruning did, with the model's numbers before and after."""

    architecture: str
    model_type: str
    importance: str | None  # the method used (None when nothing structured was asked for)
    importance_batches: int
    before: dict[str, Any]
    after: dict[str, Any]
    removed: dict[str, Any]
    sparsity: dict[str, Any] | None = None
    budget_ratio: float | None = None  # the heads / FFN ratio a parameter budget led to
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)  # task metrics before / after (filled by `prune`)

    def to_dict(self) -> dict[str, Any]:
        from edgellm.config import to_dict

        return to_dict(self)


def model_stats(model: Any, arch: Arch | None = None) -> dict[str, Any]:
    """Parameters, FP32 bytes, FLOPs per token (at FLOPS_SEQ_LEN) and the per-layer shape."""
    from edgellm.models import count_parameters

    arch = arch or arch_for(model)
    params = count_parameters(model)
    seen: set[int] = set()
    size = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen and t.is_floating_point():
            seen.add(id(t))
            size += t.numel() * t.element_size()
    return {
        "parameters": params,
        "bytes": size,
        "flops_per_token": arch.flops_per_token(FLOPS_SEQ_LEN),
        "flops_seq_len": FLOPS_SEQ_LEN,
        **arch.shape(),
    }


def score_units(model: Any, config: PruneConfig, batches: Sequence[dict[str, Any]] | None = None) -> Scores:
    """Importance of every layer, attention unit and FFN neuron (higher = keep), by `config.importance`.

    Taylor needs `batches` and a model with a task loss (a classifier or a causal LM); without them it falls back
    to magnitude, with a warning, and the report says so.
    """
    arch = arch_for(model)
    loss_fn = task_loss(model)
    use_data = config.importance == "taylor"
    if use_data and not batches:
        log.warning("importance='taylor' needs task data and none was given: scoring by weight magnitude")
        use_data = False
    if use_data and loss_fn is None:
        log.warning("%s has no task loss to differentiate (bare encoder): scoring by weight magnitude",
                    type(model).__name__)
        use_data = False
    if not use_data:
        return magnitude_scores(arch)
    used = list(batches or [])[: config.importance_batches]
    scores = taylor_scores(arch, used, loss_fn)  # type: ignore[arg-type]
    if config.layers > 0:
        scores.layers = layer_sensitivity(arch, used, loss_fn)  # type: ignore[arg-type]
    return scores


def prune_model(model: Any, *, config: PruneConfig, batches: Sequence[dict[str, Any]] | None = None,
                scores: Scores | None = None) -> PruneReport:
    """Prune `model` in place as `config` asks (structured first, then magnitude sparsity); return the report.

    Args:
        batches: tokenized task data (see `make_batches`) for Taylor scores; labels optional for classifiers.
        scores: precomputed importance (from `score_units`), to reuse across several pruning levels.
    """
    start = time.perf_counter()
    config.validate("prune")
    arch = arch_for(model)
    before = model_stats(model, arch)
    structured = bool(config.heads or config.ffn or config.layers or config.target_params)
    removed: dict[str, Any] = {"layers": [], "units": {}, "neurons_per_layer": {}}
    method = None
    used_batches = 0
    ratio = None
    if structured:
        if scores is None:
            scores = score_units(model, config, batches)
        method, used_batches = scores.method, scores.batches
        if config.layers > 0 and scores.layers is None:
            scores.layers = magnitude_scores(arch).layers
        if config.target_params is not None:
            plan, ratio = plan_for_budget(arch, scores, target_params=config.target_params, layers=config.layers)
            log.info("parameter budget %s reached with heads = ffn = %.3f", f"{config.target_params:,}", ratio)
        else:
            plan = plan_pruning(arch, scores, heads=config.heads, ffn=config.ffn, layers=config.layers)
        apply_plan(arch, plan)
        removed = plan.to_dict()
    sparsity = None
    if config.sparsity > 0:
        sparsity = magnitude_prune(model, config.sparsity, scope=config.sparsity_scope)
    after = model_stats(model, arch)
    report = PruneReport(
        architecture=type(model).__name__,
        model_type=str(model.config.model_type),
        importance=method,
        importance_batches=used_batches,
        before=before,
        after=after,
        removed=removed,
        sparsity=sparsity,
        budget_ratio=ratio,
        seconds=time.perf_counter() - start,
    )
    log.info("pruned %s: %s -> %s parameters, %.3g -> %.3g FLOPs/token", report.architecture,
             f"{before['parameters']:,}", f"{after['parameters']:,}", before["flops_per_token"],
             after["flops_per_token"])
    return report

