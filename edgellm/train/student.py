"""A student built from the teacher's own weights: embeddings, chosen layers (optionally a narrower FFN), head.

    student = build_student(teacher_model, DistillConfig(layers=[0, 2, 4]))
    student = build_student(teacher_model, DistillConfig(num_layers=2, ffn_size=768))

Works for any Hugging Face transformer whose blocks sit in one ModuleList of `config.num_hidden_layers` (BERT,
RoBERTa, ELECTRA, DistilBERT, Llama-style decoders ...). FFN neurons are found as the block's Linear layers that
map into (`out_features == intermediate`) and out of (`in_features == intermediate`) the FFN width; the neurons
kept are those with the largest product of their weights' L2 norms, in their original order.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from edgellm.errors import ConfigError, ModelError
from edgellm.recipe import DistillConfig

__all__ = ["build_student", "choose_layers", "evenly_spaced", "find_layers", "ffn_importance", "STUDENT_KEY"]

log = logging.getLogger(__name__)

STUDENT_KEY = "edgellm_student"  # config attribute recording how the student was built (teacher layers, FFN size)
_FFN_KEYS = ("intermediate_size", "hidden_dim", "n_inner", "ffn_dim")
_LAYER_KEYS = ("num_hidden_layers", "n_layers", "n_layer", "num_layers")


def evenly_spaced(count: int, total: int) -> list[int]:
    """`count` of `total` layers, evenly spaced, always ending with the top layer: 3 of 6 -> [1, 3, 5];
    2 of 6 -> [2, 5]; 1 of 6 -> [5]."""
    return [round((i + 1) * total / count) - 1 for i in range(count)]


def choose_layers(config: DistillConfig, total: int) -> list[int]:
    """The teacher layers the student keeps, checked against the teacher's `total` layers."""
    if config.layers is not None:
        bad = [i for i in config.layers if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < total]
        if bad:
            raise ConfigError(f"distill.layers = {config.layers!r}: {bad} out of range for a teacher with {total} "
                              f"layers (valid indices 0..{total - 1})")
        if len(set(config.layers)) != len(config.layers):
            raise ConfigError(f"distill.layers = {config.layers!r} repeats a layer")
        return sorted(config.layers)
    n = config.num_layers
    if n is None or not 1 <= n <= total:
        raise ConfigError(f"distill.num_layers = {n!r} is out of range for a teacher with {total} layers "
                          f"(valid 1..{total})")
    return evenly_spaced(n, total)


def find_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList, str]:
    """(qualified name, the ModuleList of transformer blocks, the config key holding their count)."""
    cfg = model.config
    key = next((k for k in _LAYER_KEYS if isinstance(getattr(cfg, k, None), int)), None)
    if key is None:
        raise ModelError(f"{type(model).__name__}: its config has no layer count ({'/'.join(_LAYER_KEYS)})")
    total = getattr(cfg, key)
    found = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.ModuleList) and len(mod) == total and name.split(".")[-1] in ("layer", "layers", "h", "block", "blocks")]
    if len(found) != 1:
        raise ModelError(f"{type(model).__name__}: cannot find its list of {total} transformer blocks "
                         f"(candidates: {[n for n, _ in found]})")
    return found[0][0], found[0][1], key


def _ffn_linears(block: torch.nn.Module, width: int, hidden: int) -> tuple[list[tuple[str, torch.nn.Linear]],
                                                                             list[tuple[str, torch.nn.Linear]]]:
    if width == hidden:
        raise ModelError(f"FFN width {width} equals the hidden size; cannot tell FFN projections apart")
    ins = [(n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == width]
    outs = [(n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features == width]
    if not ins or not outs:
        raise ModelError(f"{type(block).__name__}: no Linear layers into / out of the FFN width {width}")
    return ins, outs


def ffn_importance(block: torch.nn.Module, width: int, hidden: int) -> torch.Tensor:
    """Score per FFN neuron: product of the L2 norms of its input rows and output columns (weight magnitude)."""
    ins, outs = _ffn_linears(block, width, hidden)
    score = torch.ones(width, dtype=torch.float64)
    for _, lin in ins:
        score *= lin.weight.detach().double().norm(dim=1)
    for _, lin in outs:
        score *= lin.weight.detach().double().norm(dim=0)
    return score


def build_student(teacher: Any, config: DistillConfig,
                  neuron_scores: dict[int, torch.Tensor] | None = None) -> torch.nn.Module:
    """A smaller model of the teacher's class: embeddings, the chosen layers and the head copied from it.

    With `config.ffn_size`, each kept layer keeps its `ffn_size` most important FFN neurons: `neuron_scores`
    (teacher layer index -> one score per neuron, e.g. mean activation magnitude on real text) where given, else
    `ffn_importance` (weight magnitude).

    teacher: a Hugging Face model (or a TrainedModel / path, loaded first). The student's config records
    `edgellm_student = {"teacher_layers": [...], "teacher_num_layers": N, "ffn_size": ...}` so that layer-wise
    losses know which teacher layer each student layer learns from.
    """
    from edgellm.families import require

    model = _as_module(teacher)
    require(model.config, "student")
    prefix, blocks, key = find_layers(model)
    total = len(blocks)
    chosen = choose_layers(config, total)
    cfg = copy.deepcopy(model.config)
    setattr(cfg, key, len(chosen))
    ffn_key = next((k for k in _FFN_KEYS if isinstance(getattr(cfg, k, None), int)), None)
    width = getattr(cfg, ffn_key) if ffn_key else None
    ffn = config.ffn_size
    if ffn is not None:
        if ffn_key is None:
            raise ModelError(f"{type(model).__name__}: its config has no FFN width; distill.ffn_size cannot apply")
        if not 1 <= ffn <= width:
            raise ConfigError(f"distill.ffn_size = {ffn} is out of range: the teacher's FFN has {width} neurons "
                              f"(valid 1..{width})")
        setattr(cfg, ffn_key, ffn)
    setattr(cfg, STUDENT_KEY, {"teacher_layers": chosen, "teacher_num_layers": total,
                               "ffn_size": ffn if ffn is not None else width})
    torch.manual_seed(0)  # nothing random survives (every weight is copied); keeps construction reproducible
    student = type(model)(cfg)
    _drop_absent_modules(student, model)
    source = model.state_dict()
    target = student.state_dict()
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "dim", 0) or 0)
    keep: dict[int, torch.Tensor] = {}
    sliced: dict[str, tuple[int, int]] = {}  # teacher-layer-relative param name -> (layer position, dim)
    if ffn is not None and ffn < width:
        for pos, idx in enumerate(chosen):
            given = (neuron_scores or {}).get(idx)
            scores = given.double() if given is not None else ffn_importance(blocks[idx], width, hidden)
            keep[pos] = torch.sort(torch.topk(scores, ffn).indices).values
        ins, outs = _ffn_linears(blocks[chosen[0]], width, hidden)
        for name, _ in ins:
            sliced[f"{name}.weight"] = (0, 0)
            sliced[f"{name}.bias"] = (0, 0)
        for name, _ in outs:
            sliced[f"{name}.weight"] = (1, 1)
    state: dict[str, torch.Tensor] = {}
    head = f"{prefix}."
    for name in target:
        if name.startswith(head):
            pos_text, rest = name[len(head):].split(".", 1)
            pos = int(pos_text)
            tensor = source[f"{head}{chosen[pos]}.{rest}"]
            if rest in sliced and pos in keep:
                tensor = tensor.index_select(sliced[rest][1], keep[pos])
        else:
            tensor = source[name]
        if tensor.shape != target[name].shape:
            raise ModelError(f"cannot copy {name}: teacher {tuple(tensor.shape)} vs student {tuple(target[name].shape)}")
        state[name] = tensor.detach().clone()
    student.load_state_dict(state, strict=True)
    student.eval()
    log.info("student: teacher layers %s of %d, FFN %s -> %.1f M parameters", chosen, total,
             ffn if ffn is not None else width, sum(p.numel() for p in student.parameters()) / 1e6)
    return student


def _drop_absent_modules(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Modules the class builds by default but the teacher was loaded without (BertModel's pooler with
    add_pooling_layer=False) are removed from the student too."""
    have = set(teacher.state_dict())
    for name in list(student.state_dict()):
        if name in have:
            continue
        parts = name.split(".")
        t_obj, s_parent = teacher, student
        for depth, part in enumerate(parts[:-1]):
            t_next = getattr(t_obj, part, None)
            if t_next is None:
                if hasattr(s_parent, part) and getattr(s_parent, part) is not None:
                    setattr(s_parent, part, None)
                break
            t_obj, s_parent = t_next, getattr(s_parent, part)


def _as_module(teacher: Any) -> torch.nn.Module:
    if isinstance(teacher, torch.nn.Module):
        return teacher
    model = getattr(teacher, "model", None)
    if isinstance(model, torch.nn.Module):
        return model
    from edgellm.train.model import load_model

    return load_model(teacher).model
