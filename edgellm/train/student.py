"""A student built from the teacher's own weights: embeddings, chosen layers (optionally a narrower FFN), head.

    student = build_student(teacher_model, DistillConfig(layers=[0, 2, 4]))
    student = build_student(teacher_model, DistillConfig(num_layers=2, ffn_size=768))

Works for any Hugging Face transformer whose blocks sit in one ModuleList of `config.num_hidden_layers` (BERT,
RoBERTa, ELECTRA, DistilBERT, DeBERTa, Llama-style decoders ...). ModernBERT builds each layer by its position
(global or sliding-window attention, no attention norm at position 0): its student takes teacher layers of the
kind of each student position (`position_kinds`). FFN neurons are found as the block's Linear layers that
map into (`out_features == intermediate`) and out of (`in_features == intermediate`) the FFN width; the neurons
kept are those with the largest product of their weights' L2 norms, in their original order.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

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


def choose_layers(config: DistillConfig, total: int, kinds: Sequence[Any] | None = None) -> list[int]:
    """The teacher layers the student keeps, checked against the teacher's `total` layers.

    `kinds`: what position i of any model of the family has to be (`position_kinds`), for families whose layers
    are built by position (ModernBERT); the student's position p must receive a teacher layer of the same kind.
    """
    if kinds is not None:
        return _kind_matched_layers(config, total, kinds)
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


def position_kinds(config: Any, total: int) -> list[Any] | None:
    """What each layer position is built as, for families whose layers depend on their position; None otherwise.

    ModernBERT: position i has global attention (and the global rotary base) when i % global_attn_every_n_layers
    == 0, else sliding-window attention, and position 0 alone has no attention norm. So a student's position p
    can only take a teacher layer of p's kind: "first", "global" or "local"."""
    if getattr(config, "model_type", None) != "modernbert":
        return None
    every = int(config.global_attn_every_n_layers)
    return ["first" if i == 0 else "global" if i % every == 0 else "local" for i in range(total)]


def _kind_matched_layers(config: DistillConfig, total: int, kinds: Sequence[Any]) -> list[int]:
    """Teacher layers whose kinds match the student's positions: `config.layers` checked, or for `num_layers` the
    layer of the right kind closest to each evenly spaced choice, leaving room for the positions after it."""
    if config.layers is not None:
        chosen = choose_layers(config, total)
        want = list(kinds[: len(chosen)])  # a kind depends on the position only: the student's are the first ones
        bad = [(p, layer) for p, layer in enumerate(chosen) if kinds[layer] != want[p]]
        if bad:
            raise ConfigError(
                f"distill.layers = {config.layers!r}: student position {bad[0][0]} is a {want[bad[0][0]]!r} layer but "
                f"teacher layer {bad[0][1]} is {kinds[bad[0][1]]!r}; this family builds each layer by its position "
                f"(layer kinds {kinds}), so give layers of matching kinds, or num_layers to have them chosen")
        return chosen
    n = config.num_layers
    if n is None or not 1 <= n <= total:
        raise ConfigError(f"distill.num_layers = {n!r} is out of range for a teacher with {total} layers "
                          f"(valid 1..{total})")
    want = list(kinds[:n])

    def fits(start: int, position: int) -> bool:  # positions after `position` can follow teacher layer `start`
        last = start
        for q in range(position + 1, n):
            last = next((layer for layer in range(last + 1, total) if kinds[layer] == want[q]), total)
            if last >= total:
                return False
        return True

    chosen: list[int] = []
    for p, target in enumerate(evenly_spaced(n, total)):
        after = chosen[-1] if chosen else -1
        options = [layer for layer in range(after + 1, total) if kinds[layer] == want[p] and fits(layer, p)]
        if not options:
            raise ConfigError(f"distill.num_layers = {n}: no teacher layers of kinds {want} in order among {kinds}")
        chosen.append(min(options, key=lambda layer: (abs(layer - target), layer)))
    return chosen


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
    """(Linear layers into the FFN, out of it). A gated FFN's fused input (ModernBERT's Wi: `2 x width` rows, the
    inputs then the gates) counts when it sits beside an output layer (not an attention's fused qkv of that size)."""
    if width == hidden:
        raise ModelError(f"FFN width {width} equals the hidden size; cannot tell FFN projections apart")
    linears = [(n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    outs = [(n, m) for n, m in linears if m.in_features == width]
    parents = {n.rpartition(".")[0] for n, _ in outs}
    ins = [(n, m) for n, m in linears if m.out_features == width
           or (m.out_features == 2 * width and n.rpartition(".")[0] in parents)]
    if not ins or not outs:
        raise ModelError(f"{type(block).__name__}: no Linear layers into / out of the FFN width {width}")
    return ins, outs


def ffn_importance(block: torch.nn.Module, width: int, hidden: int) -> torch.Tensor:
    """Score per FFN neuron: product of the L2 norms of its input rows and output columns (weight magnitude)."""
    ins, outs = _ffn_linears(block, width, hidden)
    score = torch.ones(width, dtype=torch.float64)
    for _, lin in ins:
        score *= lin.weight.detach().double().norm(dim=1).view(-1, width).prod(0)  # a gated input: rows j, width+j
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
    chosen = choose_layers(config, total, position_kinds(model.config, total))
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
    sliced: dict[str, tuple[int, int]] = {}  # teacher-layer-relative param name -> (row blocks, dim)
    if ffn is not None and ffn < width:
        for pos, idx in enumerate(chosen):
            given = (neuron_scores or {}).get(idx)
            scores = given.double() if given is not None else ffn_importance(blocks[idx], width, hidden)
            keep[pos] = torch.sort(torch.topk(scores, ffn).indices).values
        ins, outs = _ffn_linears(blocks[chosen[0]], width, hidden)
        for name, lin in ins:
            parts = lin.out_features // width  # 2 for a gated input (rows j and width + j belong to neuron j)
            sliced[f"{name}.weight"] = (parts, 0)
            sliced[f"{name}.bias"] = (parts, 0)
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
                parts, dim = sliced[rest]
                tensor = tensor.index_select(dim, torch.cat([keep[pos] + k * width for k in range(parts)]))
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
