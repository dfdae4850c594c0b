"""The encoder families edgellm knows, and what each stage does with each of them.

One record per Hugging Face `model_type`: the stages that handle it, the ones that refuse it (and why), and the two
optimisations that fall back instead of refusing (the [CLS]-only last layer, ONNX Runtime's attention fusion). The
stages ask `require(config, stage)` before doing any work; docs/compatibility.md is generated from this table
(`compatibility_markdown`) and tests/test_families.py checks that it has not drifted.

    require(model.config, "prune.heads")   # UnsupportedArchitectureError naming the architecture and the stage
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgellm.errors import UnsupportedArchitectureError

__all__ = ["Family", "FAMILIES", "STAGES", "family_of", "require", "supports", "compatibility_markdown",
           "stages_for_recipe"]

# stage key -> what the table calls it
STAGES = {
    "finetune": "teacher fine-tune",
    "student": "student from teacher layers",
    "prune.heads": "prune heads",
    "prune.ffn": "prune FFN neurons",
    "prune.layers": "prune layers",
    "trim_vocab": "vocabulary trimming",
    "export": "ONNX / OpenVINO export",
    "runtime": "torch-free runtime",
}
# Optimisations that fall back (full graph / unfused INT8) where a family lacks them; never refusals.
OPTIMISATIONS = {
    "cls_only": "[CLS]-only last layer",
    "ort_fusion": "INT8 with ORT fusion",
}


@dataclass(frozen=True)
class Family:
    model_type: str  # Hugging Face config.model_type
    name: str  # what people call it
    tokenizer: str  # the tokenizer model its checkpoints ship (WordPiece, BPE, Unigram)
    refused: dict[str, str] = field(default_factory=dict)  # stage -> why it refuses this family
    cls_only: str | None = None  # None: the [CLS]-only last layer applies; else why the full graph is exported
    ort_fusion: str | None = "bert"  # onnxruntime.transformers optimizer model type; None: INT8 without fusion
    fusion_note: str = ""  # why there is no fusion (None above)


_MODERNBERT_LAYERS = ("each layer's attention (global or sliding-window, and its rotary base) and layer 0's missing "
                      "attention norm are fixed by its position, so removing a layer would change the later ones; "
                      "a distilled student (teacher layers of each position's kind) is the way to fewer layers")
FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("bert", "BERT / MiniLM", "WordPiece"),
    Family("distilbert", "DistilBERT", "WordPiece"),
    Family("roberta", "RoBERTa", "BPE"),
    Family("xlm-roberta", "XLM-RoBERTa", "Unigram"),
    Family("camembert", "CamemBERT", "Unigram"),
    Family("electra", "ELECTRA", "WordPiece"),
    Family("deberta-v2", "DeBERTa-v2 / v3", "Unigram",
           refused={"prune.heads": "its attention output layer is built hidden x hidden whatever the head count, "
                                   "so a model with fewer heads cannot be saved and reloaded"},
           cls_only="relative-position attention: the full graph is exported",
           ort_fusion=None, fusion_note="ONNX Runtime's optimizer has no DeBERTa model type: unfused INT8"),
    Family("modernbert", "ModernBERT", "BPE",
           refused={
               "prune.heads": "the fused Wqkv projection's head size is hidden_size / num_attention_heads, which "
                              "its config cannot change",
               "prune.layers": _MODERNBERT_LAYERS,
           },
           cls_only="alternating local / global attention with rotary positions: the full graph is exported",
           ort_fusion=None, fusion_note="ONNX Runtime's optimizer has no ModernBERT model type: unfused INT8"),
)}


def family_of(config: Any) -> Family | None:
    """The family record of a model config (or model), None for a model type edgellm has no record of."""
    config = getattr(config, "config", config)
    return FAMILIES.get(str(getattr(config, "model_type", "")))


def supports(config: Any, stage: str) -> bool:
    """Whether `stage` handles this architecture (unknown families: only the generic stages)."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {list(STAGES)}")
    family = family_of(config)
    if family is None:
        return stage in ("finetune", "student", "export", "runtime")  # generic code, checked against torch
    return stage not in family.refused


def require(config: Any, stage: str) -> None:
    """UnsupportedArchitectureError naming the architecture, the stage and the reason, when `stage` refuses it."""
    if supports(config, stage):
        return
    config = getattr(config, "config", config)
    model_type = str(getattr(config, "model_type", None))
    name = (getattr(config, "architectures", None) or [type(config).__name__.removesuffix("Config")])[0]
    family = family_of(config)
    if family is not None:
        why = family.refused[stage]
    else:
        why = f"edgellm has no record of this architecture (known: {', '.join(FAMILIES)})"
    raise UnsupportedArchitectureError(
        f"{STAGES[stage]} ({stage}) cannot handle {name} (model_type {model_type!r}): {why}. "
        "See docs/compatibility.md for what each architecture supports",
        model_type=model_type, stage=stage)


def stages_for_recipe(recipe: Any) -> list[str]:
    """The architecture-dependent stages an encoder recipe will run, in order."""
    stages = ["finetune"]
    if recipe.distill is not None:
        stages.append("student")
    prune = recipe.prune
    if prune is not None:
        budget = prune.target_params is not None
        if prune.heads or budget:
            stages.append("prune.heads")
        if prune.ffn or budget:
            stages.append("prune.ffn")
        if prune.layers:
            stages.append("prune.layers")
    if recipe.export.trim_vocab:
        stages.append("trim_vocab")
    return stages + ["export", "runtime"]


def compatibility_markdown() -> str:
    """The architecture x stage table of docs/compatibility.md."""
    head = ["architecture (model_type)", "tokenizer", *STAGES.values(), *OPTIMISATIONS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []

    def cell(reason: str | None, no: str) -> str:
        if reason is None:
            return "yes"
        if reason not in notes:
            notes.append(reason)
        return f"{no} [{notes.index(reason) + 1}]"

    for family in FAMILIES.values():
        row = [f"{family.name} (`{family.model_type}`)", family.tokenizer]
        row += [cell(family.refused.get(stage), "refused") for stage in STAGES]
        row.append(cell(family.cls_only, "full graph"))
        row.append(cell(None if family.ort_fusion else family.fusion_note, "unfused"))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"
