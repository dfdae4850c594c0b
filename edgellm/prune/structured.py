"""Structured pruning: choose which layers, attention units and FFN neurons go, then slice the matrices.

    plan = plan_pruning(arch, scores, heads=0.25, ffn=0.4, layers=0.0)
    apply_plan(arch, plan)

The explicit verbs (`remove_layers`, `remove_heads`, `remove_neurons`) take unit positions directly; they are what
tests and power users call, and what `apply_plan` uses.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from edgellm.errors import PruningError
from edgellm.prune.arch import Arch, arch_for
from edgellm.prune.importance import Scores

__all__ = ["Plan", "plan_pruning", "apply_plan", "plan_for_budget", "remove_layers", "remove_heads",
           "remove_neurons", "count_after"]

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What goes. Layer indices refer to the model before pruning; units and neurons to layers after the drop."""

    drop_layers: list[int] = field(default_factory=list)
    drop_units: dict[int, list[int]] = field(default_factory=dict)
    drop_neurons: dict[int, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": sorted(self.drop_layers),
            "units": {int(k): sorted(v) for k, v in self.drop_units.items() if v},
            "neurons_per_layer": {int(k): len(v) for k, v in self.drop_neurons.items() if v},
        }


def _count(ratio: float, total: int) -> int:
    """round(ratio x total), halves up (predictable, unlike Python's banker's rounding)."""
    return int(math.floor(ratio * total + 0.5))


def _check_ratio(name: str, ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio < 1.0:
        raise PruningError(f"prune.{name} = {ratio!r} is outside [0, 1): give the fraction of {name} to remove")


def plan_pruning(arch: Arch, scores: Scores, *, heads: float = 0.0, ffn: float = 0.0, layers: float = 0.0) -> Plan:
    """Lowest-scoring units first. Encoders rank heads globally (scores normalised per layer, at least one kept
    per layer); decoders remove the same number of KV groups in every layer; FFN neurons go in equal numbers per
    layer, chosen within each layer."""
    import torch

    for name, value in (("heads", heads), ("ffn", ffn), ("layers", layers)):
        _check_ratio(name, value)
        if value:
            _require(arch, name)
    n_layers = arch.num_layers()
    plan = Plan()
    n_drop = _count(layers, n_layers)
    if n_drop >= n_layers:
        raise PruningError(f"prune.layers = {layers} would remove all {n_layers} layers; keep at least one")
    if n_drop:
        if scores.layers is None:
            raise PruningError("layer scores are missing: score layers before planning a layer drop")
        order = torch.argsort(torch.as_tensor(scores.layers), stable=True).tolist()
        plan.drop_layers = sorted(order[:n_drop])
    kept = [i for i in range(n_layers) if i not in set(plan.drop_layers)]
    unit_scores = [scores.units[i] for i in kept]
    neuron_scores = [scores.neurons[i] for i in kept]
    unit_counts = [len(s) for s in unit_scores]

    if heads > 0:
        if not arch.uniform_units:
            total = sum(unit_counts)
            n_drop = _count(heads, total)
            if n_drop > total - len(kept):
                raise PruningError(
                    f"prune.heads = {heads} would remove {n_drop} of {total} heads, leaving a layer with none; keep "
                    f"at least one head per layer (at most {total - len(kept)} can go), or remove the layer with "
                    "prune.layers"
                )
            ranked = []
            for new_i, s in enumerate(unit_scores):
                s = torch.as_tensor(s, dtype=torch.float64)
                norm = float(s.norm()) or 1.0  # per-layer normalisation (Michel et al. 2019)
                ranked += [(float(v) / norm, new_i, u) for u, v in enumerate(s)]
            ranked.sort(key=lambda r: (r[0], r[1], r[2]))
            left = list(unit_counts)
            for _, new_i, u in ranked:
                if n_drop == 0:
                    break
                if left[new_i] > 1:
                    plan.drop_units.setdefault(new_i, []).append(u)
                    left[new_i] -= 1
                    n_drop -= 1
        else:
            for new_i, s in enumerate(unit_scores):
                n = _count(heads, len(s))
                if n >= len(s):
                    raise PruningError(
                        f"prune.heads = {heads} would remove all {len(s)} {arch.unit_name}s of each layer; keep at "
                        "least one (a lower ratio), or remove whole layers with prune.layers"
                    )
                if n:
                    order = torch.argsort(torch.as_tensor(s), stable=True).tolist()
                    plan.drop_units[new_i] = sorted(order[:n])
    if ffn > 0:
        for new_i, s in enumerate(neuron_scores):
            n = _count(ffn, len(s))
            if n >= len(s):
                raise PruningError(f"prune.ffn = {ffn} would remove all {len(s)} FFN neurons of a layer")
            if n:
                order = torch.argsort(torch.as_tensor(s), stable=True).tolist()
                plan.drop_neurons[new_i] = sorted(order[:n])
    return plan


def count_after(arch: Arch, plan: Plan) -> int:
    """Parameters the model will have after `plan` (computed, nothing changed)."""
    from edgellm.models import count_parameters

    total = count_parameters(arch.model)
    layers = list(arch.layers())
    total -= sum(arch.layer_params(layers[i]) for i in plan.drop_layers)
    kept = [layer for i, layer in enumerate(layers) if i not in set(plan.drop_layers)]
    for new_i, units in plan.drop_units.items():
        total -= len(units) * arch.unit_params(kept[new_i])
    for new_i, neurons in plan.drop_neurons.items():
        total -= len(neurons) * arch.neuron_params(kept[new_i])
    return total


def plan_for_budget(arch: Arch, scores: Scores, *, target_params: int, layers: float = 0.0,
                    step: float = 0.005) -> tuple[Plan, float]:
    """The smallest shared heads / FFN ratio whose plan fits `target_params`; (plan, ratio)."""
    from edgellm.models import count_parameters

    now = count_parameters(arch.model)
    best: tuple[Plan, float] | None = None
    ratio = 0.0
    while ratio < 1.0:
        try:
            plan = plan_pruning(arch, scores, heads=ratio, ffn=ratio, layers=layers)
        except PruningError:
            break  # ratios past this remove every unit of a layer
        params = count_after(arch, plan)
        best = (plan, ratio)
        if params <= target_params:
            return plan, ratio
        ratio = round(ratio + step, 6)
    floor = count_after(arch, best[0]) if best else now
    raise PruningError(
        f"prune.target_params = {target_params:,} cannot be reached by removing heads and FFN neurons: the least "
        f"this model ({now:,} parameters) gets to is {floor:,}; embeddings dominate small models, so trim the "
        "vocabulary (export.trim_vocab) or remove layers (prune.layers)"
    )


def apply_plan(arch: Arch, plan: Plan) -> None:
    """Slice the model as planned (layers first, then units and neurons), and update its config.

    The resulting shapes are checked before anything is cut, so a refused plan leaves the model untouched.
    """
    layers = arch.layers()
    kept = [layer for i, layer in enumerate(layers) if i not in set(plan.drop_layers)]
    arch.check_shapes(
        [arch.attention_units(layer) - len(plan.drop_units.get(i, ())) for i, layer in enumerate(kept)],
        [arch.ffn_width(layer) - len(plan.drop_neurons.get(i, ())) for i, layer in enumerate(kept)],
    )
    if plan.drop_layers:
        keep = [i for i in range(arch.num_layers()) if i not in set(plan.drop_layers)]
        arch.keep_layers(keep)
    layers = arch.layers()
    for new_i, units in sorted(plan.drop_units.items()):
        if units:
            arch.keep_units(new_i, [u for u in range(arch.attention_units(layers[new_i])) if u not in set(units)])
    for new_i, neurons in sorted(plan.drop_neurons.items()):
        if neurons:
            arch.keep_neurons(new_i, [j for j in range(arch.ffn_width(layers[new_i])) if j not in set(neurons)])
    arch.finish()


def _require(arch: Arch, unit: str) -> None:
    """UnsupportedArchitectureError when the model's family refuses removing `unit` (edgellm.families)."""
    if arch.family == "encoder":
        from edgellm.families import require

        require(arch.config, f"prune.{unit}")


def _check_positions(what: str, mapping: Mapping[int, Sequence[int]], sizes: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, items in mapping.items():
        if not isinstance(layer, int) or not 0 <= layer < len(sizes):
            raise PruningError(f"{what}: layer {layer!r} does not exist (the model has {len(sizes)} layers)")
        positions = sorted(set(int(x) for x in items))
        bad = [x for x in positions if not 0 <= x < sizes[layer]]
        if bad:
            raise PruningError(f"{what}: layer {layer} has {sizes[layer]} {what}, so {bad} are out of range")
        out[layer] = positions
    return out


def remove_layers(model: Any, layers: Sequence[int]) -> Any:
    """Remove whole layers (indices now). Returns the model, changed in place."""
    arch = arch_for(model)
    _require(arch, "layers")
    n = arch.num_layers()
    drop = sorted(set(int(i) for i in layers))
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise PruningError(f"layers {bad} do not exist (the model has {n} layers)")
    if len(drop) >= n:
        raise PruningError(f"removing layers {drop} would leave none of the {n} layers")
    apply_plan(arch, Plan(drop_layers=drop))
    return model


def remove_heads(model: Any, heads: Mapping[int, Sequence[int]]) -> Any:
    """Remove attention units {layer: [positions]}: heads for encoders, KV groups for GQA decoders.

    A layer must keep at least one; to lose all of them, remove the layer (`remove_layers`).
    """
    arch = arch_for(model)
    _require(arch, "heads")
    layers = arch.layers()
    what = f"{arch.unit_name}s"
    checked = _check_positions(what, heads, [arch.attention_units(layer) for layer in layers])
    for layer, units in checked.items():
        if len(units) >= arch.attention_units(layers[layer]):
            raise PruningError(
                f"removing {what} {units} would leave layer {layer} with no {arch.unit_name}; keep at least one, "
                "or remove the whole layer on purpose (remove_layers / prune.layers)"
            )
    apply_plan(arch, Plan(drop_units=checked))
    return model


def remove_neurons(model: Any, neurons: Mapping[int, Sequence[int]]) -> Any:
    """Remove FFN neurons {layer: [positions]} (every layer must end with the same width)."""
    arch = arch_for(model)
    _require(arch, "ffn")
    layers = arch.layers()
    checked = _check_positions("FFN neurons", neurons, [arch.ffn_width(layer) for layer in layers])
    for layer, items in checked.items():
        if len(items) >= arch.ffn_width(layers[layer]):
            raise PruningError(f"removing {len(items)} FFN neurons would leave layer {layer} with none")
    apply_plan(arch, Plan(drop_neurons=checked))
    return model
