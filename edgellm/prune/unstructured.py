"""Unstructured magnitude pruning: zero the smallest weights of the transformer blocks' matrices, permanently.

The zeros are written into the weights themselves (no masks, no hooks, no `weight_orig`), so the model saves,
exports and reloads like any other; they make files compress better and sparse kernels possible, not dense
inference faster. The sparsity reached is measured and reported, never assumed.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from edgellm.errors import PruningError

__all__ = ["magnitude_prune", "sparsity_targets", "measure_sparsity"]

log = logging.getLogger(__name__)


def sparsity_targets(model: Any) -> list[tuple[str, Any]]:
    """(name, weight) of every matrix inside the transformer blocks; other models: every nn.Linear but the output
    head (embeddings, classifier and LM head are left dense)."""
    import torch

    from edgellm.prune.arch import arch_for

    try:
        arch = arch_for(model)
    except PruningError:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return [(name, m.weight) for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and m is not head and not name.split(".")[-1].startswith(("classifier", "score"))]
    return [(name, m.weight) for name, m in arch.block_linears()]


def measure_sparsity(model: Any) -> dict[str, Any]:
    """Zeros among the sparsity targets and among all parameters."""
    from edgellm.models import count_parameters

    targets = sparsity_targets(model)
    zeros = sum(int((w == 0).sum()) for _, w in targets)
    size = sum(w.numel() for _, w in targets)
    seen: set[int] = set()
    all_zeros = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            all_zeros += int((p == 0).sum())
    total = count_parameters(model)
    return {
        "target_weights": size,
        "target_zeros": zeros,
        "measured": zeros / size if size else 0.0,
        "all_parameters_zero_share": all_zeros / total if total else 0.0,
    }


def _zero_smallest(weights: list[Any], count: int) -> None:
    """Zero exactly `count` entries of smallest |w| across `weights` (ties broken by position)."""
    import torch

    if count <= 0:
        return
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    threshold = torch.kthvalue(flat.float(), count).values
    below = flat < threshold
    need = count - int(below.sum())
    ties = torch.nonzero(flat == threshold).reshape(-1)[: max(need, 0)]
    mask = below
    mask[ties] = True
    start = 0
    with torch.no_grad():
        for w in weights:
            n = w.numel()
            w.masked_fill_(mask[start : start + n].view_as(w), 0.0)
            start += n


def magnitude_prune(model: Any, sparsity: float, *, scope: Literal["global", "layer"] = "global") -> dict[str, Any]:
    """Zero the `sparsity` share of smallest-magnitude block weights: ranked across all of them (global) or
    within each matrix (layer). Changes the model in place; returns the measured sparsity."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise PruningError(f"prune.sparsity = {sparsity!r} is outside [0, 1): give the share of weights to zero")
    if scope not in ("global", "layer"):
        raise PruningError(f"prune.sparsity_scope = {scope!r} is not one of ['global', 'layer']")
    targets = sparsity_targets(model)
    if not targets:
        raise PruningError(f"{type(model).__name__} has no linear layers to sparsify")
    weights = [w for _, w in targets]
    if scope == "global":
        _zero_smallest(weights, int(sparsity * sum(w.numel() for w in weights)))
    else:
        for w in weights:
            _zero_smallest([w], int(sparsity * w.numel()))
    stats = measure_sparsity(model)
    stats.update({"target": float(sparsity), "scope": scope, "matrices": len(weights)})
    log.info("magnitude pruning (%s): %.2f%% of %d block weights are zero", scope, 100 * stats["measured"],
             stats["target_weights"])
    return stats
