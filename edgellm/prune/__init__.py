"""Pruning that makes a model really smaller and faster, and magnitude sparsity.

Structured: whole layers, attention heads (KV groups for grouped-query decoders) and FFN neurons are removed by
slicing the weight matrices and updating the config, so the saved folder and its ONNX export shrink and run
faster. Units are scored on task data (Taylor: |grad x weight| per unit) or, without data, by weight magnitude.
Unstructured: the smallest weights of the block matrices are zeroed in place, to a measured sparsity.

    from edgellm.prune import prune_model
    report = prune_model(model, config=PruneConfig(heads=0.25, ffn=0.4), batches=batches)  # model changed in place

    from edgellm.prune import prune                         # folders: what `edgellm prune` runs
    report = prune("teacher/", "pruned/", config=PruneConfig(ffn=0.4), data=DataConfig(name="movie-reviews"))

Structured pruning keeps configs that `from_pretrained` reloads: BERT-family heads may differ per layer (HF's
`config.pruned_heads`), FFN widths are the same in every layer; Llama-family decoders lose the same number of KV
groups and neurons in every layer (one `num_key_value_heads`, the KV-cache shape). See arch.py.
"""

from __future__ import annotations

from edgellm.prune.arch import arch_for
from edgellm.prune.importance import Scores, magnitude_scores, make_batches, taylor_scores
from edgellm.prune.model import FLOPS_SEQ_LEN, PruneReport, model_stats, prune_model, score_units
from edgellm.prune.stage import prune
from edgellm.prune.structured import (
    Plan,
    apply_plan,
    plan_for_budget,
    plan_pruning,
    remove_heads,
    remove_layers,
    remove_neurons,
)
from edgellm.prune.unstructured import magnitude_prune, measure_sparsity

__all__ = [
    "prune",
    "PruneReport",
    "prune_model",
    "score_units",
    "model_stats",
    "make_batches",
    "magnitude_prune",
    "measure_sparsity",
    "remove_heads",
    "remove_layers",
    "remove_neurons",
    "arch_for",
    "magnitude_scores",
    "taylor_scores",
    "plan_pruning",
    "plan_for_budget",
    "apply_plan",
    "Plan",
    "Scores",
    "FLOPS_SEQ_LEN",
]
