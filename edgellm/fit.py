"""`edgellm fit RECIPE --target T --max-ms X ...`: the compression plan that meets a device budget, found by search.

    from edgellm.fit import fit
    from edgellm.recipe import load_recipe
    result = fit(load_recipe("export/sentiment-minilm.yaml"), target="cpu-x86-avx512", min_speedup=12,
                 at_length=128, max_drop=1.0, budget_minutes=60, output="artifacts/fit-sentiment")
    result.ok, result.chosen["plan"], result.failed, result.closest

A plan is a variant of the recipe: student depth, the share of attention heads and FFN neurons pruned, vocabulary
trimming, the INT8 engine (ONNX Runtime dynamic / static, OpenVINO static, or FP32) and the [CLS]-only last layer.
Every plan is a recipe run through the same stage cache as `edgellm compress` (edgellm.pipeline.EncoderStages), so
plans share their common stages and nothing is trained twice. The search:

1. Budgets are checked first (typed errors: unknown target, contradictory or missing budgets, decoders).
2. The teacher stage runs (or is reused); the teacher's FP32 PyTorch latency is measured in this run. Every later
   timing of the search is taken in alternating rounds with the teacher and quoted at the teacher's reference p50
   (its p50 x reference / the teacher's p50 in the same rounds): a machine that gets busier or quieter during a
   long search moves the teacher and the timed model alike, so predictions, measurements and budgets stay
   comparable (`_TeacherClock`).
3. Latency and size of every plan are predicted by a cost model of the target (edgellm.bench.latency_model),
   fitted on untrained shapes exported and timed here, or read from the profile's recorded table when the device
   is not this machine. Plans predicted outside the speed / size budget (beyond the model's error margin) are
   never trained; when none is left, the result says which budget failed, with the closest plans.
4. Successive halving over the trained part of the plans (depth, heads, FFN): every candidate trains for a share
   of its distillation schedule (the recovery distillation of a pruned student, or the student's distillation),
   the best 1/eta by validation score continue from their checkpoint (edgellm._pause), until the last rung
   completes the schedule. A pruned plan whose unpruned student is already far below the accuracy floor is
   dropped without pruning it.
5. The finalists' cheap variants (vocabulary, INT8 engine, [CLS]-only) are exported, quantized, scored on the
   validation split and timed through the runtime; the chosen plan meets every budget on those measurements.
   With a speed or size budget it is the most accurate such plan; with only an accuracy budget, the fastest.
6. After the choice, and only then, the chosen plan is measured on the test split (every stage's test metrics and
   the artifact's models), published as an artifact, and timed against the teacher in alternating rounds.

Written to OUTPUT: frontier.json / frontier.md / frontier.png (every plan, the Pareto frontier, measured and
predicted numbers told apart), plan.yaml (the chosen plan as a recipe: `edgellm compress plan.yaml` rebuilds it,
reusing the stage cache), artifact/ (the chosen plan's artifact) and latency-table.json (the shapes timed here, a
table for a profile's `latency_table`). The work folder (default OUTPUT.work) keeps every stage; rerunning the same
fit resumes where it stopped, finished trials reused.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgellm._pause import TrainingPaused
from edgellm.artifact import atomic_folder, atomic_write_text, check_output, read_manifest
from edgellm.bench.latency_model import EncoderShape, LatencyModel
from edgellm.bench.stats import ROUNDS
from edgellm.config import jsonable, to_dict
from edgellm.errors import ConfigError, UnsupportedTargetError
from edgellm.pipeline import EncoderStages, StageCache, default_work_dir, load_encoder_data, stage_key
from edgellm.recipe import DistillConfig, PruneConfig, QuantizeConfig, Recipe

__all__ = ["fit", "FitResult", "Budget", "Arm", "Plan", "parse_space", "plan_recipe", "FIT_FILES", "ENGINES",
           "MARGIN", "BOUND_SLACK"]

log = logging.getLogger(__name__)

FIT_FILES = {"json": "frontier.json", "md": "frontier.md", "png": "frontier.png", "recipe": "plan.yaml",
             "table": "latency-table.json", "artifact": "artifact"}
# The INT8 (or float) engines a plan can run on: backend / mode. OpenVINO has no dynamic-activation INT8.
ENGINES = ("onnxruntime/dynamic", "onnxruntime/static", "onnxruntime/weight-only", "onnxruntime/fp32",
           "openvino/static", "openvino/weight-only", "openvino/fp32")
MARGIN = 0.10  # least error margin given to predicted latency / size before a plan is judged outside a budget
BOUND_SLACK = 1.0  # points: a pruned plan is dropped when its unpruned student is this far below the floor
_PROBE_CALIBRATION = 32  # calibration texts of a timed shape (INT8 speed does not depend on their number)
MIN_REPEAT = 50  # timed calls per latency measurement of the search at least (the recipe's evaluate.repeat if more)
_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}
_PREFIX = {"onnxruntime": "onnx", "openvino": "openvino"}


# --- budgets ---------------------------------------------------------------------------------------------------

@dataclass
class Budget:
    """What the plan must meet. Latency is p50 at batch 1 on `at_length` padded tokens; sizes are the model files
    on disk; accuracy is the validation metric (accuracy %, or Spearman x 100 against the teacher for embeddings)
    against the FP32 PyTorch teacher's. Relative budgets compare with the teacher measured in the same run."""

    max_ms: float | None = None  # p50 ms at most
    at_length: int | None = None  # tokens of the latency budget (default: the recipe's evaluate.latency_length)
    max_mb: float | None = None  # MB (1e6 bytes) on disk at most
    min_speedup: float | None = None  # teacher p50 (FP32 PyTorch) / plan p50 at least
    min_shrink: float | None = None  # teacher size (FP32 safetensors) / plan size at least
    max_drop: float | None = None  # points below the teacher's validation score at most
    min_retention: float | None = None  # percent of the teacher's validation score at least
    budget_minutes: float | None = None  # wall-clock time of the search (a soft limit: no new work past it)

    def check(self) -> None:
        for name in ("max_ms", "max_mb", "min_speedup", "min_shrink", "budget_minutes"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')} = {value!r}: give a positive number")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise ConfigError(f"--max-drop = {self.max_drop!r}: give the points the plan may lose, 0 or more")
        if self.min_retention is not None and not (math.isfinite(self.min_retention) and 0 < self.min_retention <= 100):
            raise ConfigError(f"--min-retention = {self.min_retention!r}: give a percentage in (0, 100]")
        if self.max_drop is not None and self.min_retention is not None:
            raise ConfigError("--max-drop and --min-retention both bound accuracy; give one of them")
        if self.at_length is not None and (not isinstance(self.at_length, int) or self.at_length < 2):
            raise ConfigError(f"--at-length = {self.at_length!r}: give a token count of 2 or more")
        if self.at_length is not None and self.max_ms is None and self.min_speedup is None:
            raise ConfigError("--at-length sets the input length of a latency budget; give --max-ms or "
                              "--min-speedup with it")
        if not (self.speed_or_size or self.accuracy):
            raise ConfigError("no budget: give at least one of --max-ms, --min-speedup, --max-mb, --min-shrink, "
                              "--max-drop, --min-retention")

    @property
    def speed_or_size(self) -> bool:
        return any(v is not None for v in (self.max_ms, self.min_speedup, self.max_mb, self.min_shrink))

    @property
    def accuracy(self) -> bool:
        return self.max_drop is not None or self.min_retention is not None

    @property
    def objective(self) -> str:
        """What the choice maximises among plans within every budget: accuracy when speed or size is bounded,
        else speed (only an accuracy budget: the fastest plan within it)."""
        return "accuracy" if self.speed_or_size else "latency"

    def flags(self) -> dict[str, float]:
        return {f"--{k.replace('_', '-')}": v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Reference:
    """The teacher the relative budgets and the accuracy budget are measured against."""

    points: float  # validation score (FP32 PyTorch)
    p50_ms: float  # FP32 PyTorch p50 at the budget's length, measured in this run
    size_bytes: int  # FP32 safetensors on disk
    metric: str  # "accuracy %" or "Spearman x 100"


# Each budget flag: (flag, Budget field, measured quantity, kind of limit, unit), in the order reports list them.
_BUDGET_FLAGS = (
    ("--max-ms", "max_ms", "p50_ms", "max", "ms"),
    ("--min-speedup", "min_speedup", "speedup", "min", "x"),
    ("--max-mb", "max_mb", "size_mb", "max", "MB"),
    ("--min-shrink", "min_shrink", "shrink", "min", "x"),
    ("--max-drop", "max_drop", "drop", "max", "points"),
    ("--min-retention", "min_retention", "retention", "min", "%"),
)


def _constraints(budget: Budget, ref: Reference) -> list[dict[str, Any]]:
    """Each budget as {flag, quantity, kind (max/min), limit, unit}."""
    return [{"flag": flag, "quantity": quantity, "kind": kind, "limit": getattr(budget, field), "unit": unit}
            for flag, field, quantity, kind, unit in _BUDGET_FLAGS if getattr(budget, field) is not None]


def _quantities(numbers: dict[str, Any], ref: Reference) -> dict[str, float | None]:
    """p50_ms, size_mb, points -> every quantity a budget may bound."""
    p50, size, points = numbers.get("p50_ms"), numbers.get("size_bytes"), numbers.get("points")
    return {
        "p50_ms": p50,
        "speedup": ref.p50_ms / p50 if p50 else None,
        "size_mb": size / 1e6 if size else None,
        "shrink": ref.size_bytes / size if size else None,
        "drop": ref.points - points if points is not None else None,
        "retention": 100.0 * points / ref.points if points is not None and ref.points else None,
    }


def _shortfall(c: dict[str, Any], value: float | None, margin: float = 0.0) -> float | None:
    """How far `value` is from meeting constraint `c` (0 when it meets it, None when unknown); relative for speed
    and size, points / 100 for accuracy. `margin` widens the limit (predicted values)."""
    if value is None:
        return None
    limit = c["limit"]
    if c["quantity"] in ("drop", "retention"):
        miss = (value - limit) if c["kind"] == "max" else (limit - value)
        return max(0.0, miss / 100.0)
    if c["kind"] == "max":
        return max(0.0, value / (limit * (1 + margin)) - 1.0)
    return max(0.0, 1.0 - value * (1 + margin) / limit)


# --- the plan space --------------------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Arm:
    """The trained part of a plan: student depth and the share of heads / FFN neurons pruned from it."""

    layers: int
    heads: float = 0.0
    ffn: float = 0.0

    @property
    def pruned(self) -> bool:
        return self.heads > 0 or self.ffn > 0

    @property
    def id(self) -> str:
        return f"L{self.layers}" + (f"-h{self.heads:g}" if self.heads else "") + (f"-f{self.ffn:g}" if self.ffn else "")


@dataclass(frozen=True, order=True)
class Plan:
    """One point of the space: an arm plus the variants that need no training."""

    arm: Arm
    trim_vocab: bool
    engine: str  # one of ENGINES
    cls_only: bool

    @property
    def backend(self) -> str:
        return self.engine.split("/")[0]

    @property
    def mode(self) -> str:
        return self.engine.split("/")[1]

    @property
    def model_name(self) -> str:
        """The model entry of the plan's artifact that the plan deploys."""
        return f"{_PREFIX[self.backend]}-{'fp32' if self.mode == 'fp32' else 'int8'}"

    @property
    def id(self) -> str:
        return (f"{self.arm.id}-{'trim' if self.trim_vocab else 'vocab'}-{self.engine.replace('/', '-')}"
                + ("-cls" if self.cls_only else ""))

    def describe(self) -> dict[str, Any]:
        return {"plan": self.id, "arm": self.arm.id, "layers": self.arm.layers, "heads_pruned": self.arm.heads,
                "ffn_pruned": self.arm.ffn, "trim_vocab": self.trim_vocab, "engine": self.engine,
                "cls_only": self.cls_only, "model": self.model_name}


AXES = ("layers", "heads", "ffn", "trim_vocab", "engine", "cls_only")


def parse_space(items: Sequence[str]) -> dict[str, list[Any]]:
    """`AXIS=V1,V2` items (layers=2,3 heads=0,0.5 ffn=0 trim_vocab=true engine=onnxruntime/dynamic
    cls_only=true) -> {axis: values}; the values are checked against the teacher and target later."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in AXES:
            from edgellm.config import suggest

            raise ConfigError(f"--space {item!r}: give AXIS=V1,V2 with AXIS one of {', '.join(AXES)}"
                              + (suggest(key, AXES) if key else ""))
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--space {item!r} lists no values")
        try:
            if key == "layers":
                parsed: list[Any] = [int(v) for v in values]
            elif key in ("heads", "ffn"):
                parsed = [float(v) for v in values]
            elif key in ("trim_vocab", "cls_only"):
                bools = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
                parsed = [bools[v.lower()] for v in values]
            else:
                parsed = values
        except (ValueError, KeyError):
            raise ConfigError(f"--space {item!r}: {key} takes "
                              + {"layers": "integers", "heads": "fractions in [0, 1)", "ffn": "fractions in [0, 1)",
                                 "trim_vocab": "true / false", "cls_only": "true / false"}.get(key, "names")) from None
        if key in out:
            raise ConfigError(f"--space names {key} twice")
        out[key] = list(dict.fromkeys(parsed))
    return out


def _count(ratio: float, total: int) -> int:
    return int(math.floor(ratio * total + 0.5))  # edgellm.prune.structured's rounding


@dataclass
class TeacherShape:
    """The teacher's dimensions, from which every plan's shape follows."""

    layers: int
    heads: int  # per layer
    hidden: int
    head_dim: int
    ffn: int
    vocab: int
    positions: int
    type_vocab: int
    labels: int
    cls_supported: bool
    trim_supported: bool
    trimmed_vocab: int | None  # rows left by vocabulary trimming of the training text

    def plan_shape(self, plan: Plan) -> EncoderShape:
        arm = plan.arm
        total = arm.layers * self.heads
        kept_heads = (total - _count(arm.heads, total)) / arm.layers
        kept_ffn = self.ffn - _count(arm.ffn, self.ffn)
        vocab = self.trimmed_vocab if plan.trim_vocab and self.trimmed_vocab else self.vocab
        return EncoderShape(hidden=self.hidden, head_dim=self.head_dim, heads=[kept_heads] * arm.layers,
                            ffn=[float(kept_ffn)] * arm.layers, vocab=vocab, positions=self.positions,
                            type_vocab=self.type_vocab, labels=self.labels, cls_only=plan.cls_only)

    def train_macs(self, arm: Arm, tokens: int) -> float:
        """Attention + FFN multiply-adds of one forward pass of the arm at `tokens` (a training-cost unit)."""
        from edgellm.bench.latency_model import latency_features

        shape = self.plan_shape(Plan(arm, False, "onnxruntime/fp32", False))
        return float(latency_features(shape, tokens)[2:].sum())


def _shape_of(model: Any, *, labels: int, cls_only: bool) -> EncoderShape:
    """The EncoderShape of a loaded HF encoder (per-layer heads and FFN widths as pruning left them)."""
    from edgellm.prune.arch import arch_for

    config = model.config
    shape = arch_for(model).shape()
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", 0) or hidden // int(config.num_attention_heads))
    return EncoderShape(hidden=hidden, head_dim=head_dim, heads=[float(h) for h in shape["heads_per_layer"]],
                        ffn=[float(f) for f in shape["ffn_per_layer"]],
                        vocab=int(model.get_input_embeddings().weight.shape[0]),
                        positions=int(getattr(config, "max_position_embeddings", 512) or 512),
                        type_vocab=int(getattr(config, "type_vocab_size", 0) or 0), labels=labels, cls_only=cls_only)


def _teacher_shape(recipe: Recipe, data: Any, tm: Any) -> TeacherShape:
    from edgellm.errors import ModelError
    from edgellm.exporting.onnx import cls_only_supported
    from edgellm.vocab import choose_tokens

    labels = len(data.labels or []) if recipe.task == "text-classification" else 0
    shape = _shape_of(tm.model, labels=labels, cls_only=False)
    if len(set(shape.heads)) != 1 or len(set(shape.ffn)) != 1:
        raise ConfigError("fit needs a teacher with the same heads and FFN width in every layer; this one was "
                          f"pruned already (heads {shape.heads}, FFN {shape.ffn})")
    try:
        trimmed: int | None = len(choose_tokens(tm.tokenizer, _trim_texts(recipe, data))[0])
    except ModelError:
        trimmed = None
    return TeacherShape(layers=shape.layers, heads=int(shape.heads[0]), hidden=shape.hidden, head_dim=shape.head_dim,
                        ffn=int(shape.ffn[0]), vocab=shape.vocab, positions=shape.positions,
                        type_vocab=shape.type_vocab, labels=labels,
                        cls_supported=cls_only_supported(tm.model, recipe.task), trim_supported=trimmed is not None,
                        trimmed_vocab=trimmed)


def _trim_texts(recipe: Recipe, data: Any) -> list[str]:
    """The text the vocab stage keeps the tokens of: the training split and export.vocab_texts (minus held-out)."""
    from edgellm.data import load_texts

    texts = list(data.train.texts)
    held_out = set(data.validation.texts) | set(data.test.texts)
    for name in recipe.export.vocab_texts:
        texts += [t for t in load_texts(name) if t not in held_out]
    return texts


def _target_engines(profile: Any) -> list[str]:
    """The engines a CPU profile's INT8 preset runs (ONNX Runtime first), and FP32 on the profile's backend."""
    from edgellm.quantize.presets import get_preset

    if profile.quantization is None:
        return [f"{profile.backend}/fp32"]
    preset = get_preset(profile.quantization.preset)
    engines = []
    for backend in sorted(preset.backends, key=lambda b: b != "onnxruntime"):
        for mode in preset.modes:
            if backend == "openvino" and mode == "dynamic":
                continue  # OpenVINO makes NNCF static INT8 for "dynamic": the same model as static
            engines.append(f"{backend}/{mode}")
    return engines + [f"{profile.backend}/fp32"]


def _space(recipe: Recipe, teacher: TeacherShape, profile: Any, given: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every axis: the values given (checked), else the recipe's neighbourhood."""
    allowed = _target_engines(profile)
    if recipe.distill is not None:
        n = len(recipe.distill.layers) if recipe.distill.layers else int(recipe.distill.num_layers or 1)
        layers = sorted({d for d in (n - 1, n, n + 1) if 1 <= d < teacher.layers} or {min(n, teacher.layers)})
    else:
        layers = [teacher.layers]
    grid = [0.0, 0.25, 0.5, 0.75]
    heads = sorted({*grid, recipe.prune.heads}) if recipe.prune is not None else [0.0]
    ffn = sorted({*grid, recipe.prune.ffn}) if recipe.prune is not None else [0.0]
    if recipe.quantize is None or recipe.quantize.mode == "none":
        engines = [e for e in allowed if e.endswith("/fp32")]
    else:
        engines = [e for e in allowed if not e.endswith("/fp32") and e.split("/")[1] in ("dynamic", "static")
                   and e.split("/")[0] in recipe.quantize.backends]
    space: dict[str, list[Any]] = {
        "layers": layers, "heads": heads, "ffn": ffn,
        "trim_vocab": [False, True] if teacher.trim_supported else [False],
        "engine": engines or allowed[:1],
        "cls_only": [True, False] if teacher.cls_supported else [False],
    }
    for axis, values in given.items():
        if axis == "layers":
            bad = [v for v in values if not 1 <= v <= teacher.layers]
            if bad:
                raise ConfigError(f"--space layers: {bad} outside 1..{teacher.layers} (the teacher's depth; "
                                  f"{teacher.layers} keeps the teacher itself)")
        elif axis in ("heads", "ffn"):
            bad = [v for v in values if not 0.0 <= v < 1.0]
            if bad:
                raise ConfigError(f"--space {axis}: {bad} outside [0, 1) (the share removed)")
        elif axis == "engine":
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ConfigError(f"--space engine: {bad} not run by target {profile.name} (its engines: "
                                  f"{', '.join(allowed)})")
        elif axis == "trim_vocab" and True in values and not teacher.trim_supported:
            raise ConfigError("--space trim_vocab=true: the teacher's tokenizer is not WordPiece; vocabulary "
                              "trimming is for the BERT family")
        elif axis == "cls_only" and True in values and not teacher.cls_supported:
            raise ConfigError("--space cls_only=true: the [CLS]-only last layer is for BERT classifiers; this "
                              f"{'model' if recipe.task == 'text-classification' else recipe.task + ' model'} has "
                              "none")
        space[axis] = sorted(values)
    return space


def _arms(space: dict[str, list[Any]], teacher: TeacherShape) -> list[Arm]:
    arms = []
    for layers in space["layers"]:
        for heads in space["heads"]:
            for ffn in space["ffn"]:
                total = layers * teacher.heads
                if _count(heads, total) > total - layers or _count(ffn, teacher.ffn) >= teacher.ffn:
                    continue  # would leave a layer without heads / neurons: not a plan
                arms.append(Arm(layers, heads, ffn))
    return arms


def _plans(space: dict[str, list[Any]], arms: Sequence[Arm]) -> list[Plan]:
    return [Plan(arm, trim, engine, cls) for arm in arms for trim in space["trim_vocab"]
            for engine in space["engine"] for cls in space["cls_only"]]


def plan_recipe(recipe: Recipe, plan: Plan, *, teacher_layers: int, preset: str | None, at_length: int) -> Recipe:
    """The recipe that builds `plan` (its artifact deploys `plan.model_name`)."""
    arm = plan.arm
    r = copy.deepcopy(recipe)
    if arm.layers >= teacher_layers:
        r.distill = None
    else:
        base = recipe.distill or DistillConfig()
        keep = base.layers if base.layers and len(base.layers) == arm.layers else None
        r.distill = dataclasses.replace(base, layers=keep, num_layers=None if keep else arm.layers)
    extra = recipe.prune is not None and (recipe.prune.layers or recipe.prune.sparsity)
    if arm.pruned or extra:
        r.prune = dataclasses.replace(recipe.prune or PruneConfig(), heads=arm.heads, ffn=arm.ffn, target_params=None)
    else:
        r.prune = None
    r.export = dataclasses.replace(recipe.export, trim_vocab=plan.trim_vocab, cls_only=plan.cls_only,
                                   formats=[_FORMAT[plan.backend]])
    if plan.mode == "fp32":
        r.quantize = None
    else:
        r.quantize = dataclasses.replace(recipe.quantize or QuantizeConfig(), mode=plan.mode,
                                         backends=[plan.backend], preset=preset)
    r.targets = []
    r.evaluate = dataclasses.replace(recipe.evaluate, latency_length=at_length)
    return r


def _arm_recipe(recipe: Recipe, arm: Arm, teacher: TeacherShape, at_length: int) -> Recipe:
    """The recipe of an arm's training stages (later stages do not matter to them)."""
    return plan_recipe(recipe, Plan(arm, False, "onnxruntime/fp32", False), teacher_layers=teacher.layers,
                       preset=None, at_length=at_length)


# --- measurements ----------------------------------------------------------------------------------------------

def _points(task: str, metrics: dict[str, Any] | None) -> float | None:
    """A validation record as points: accuracy % (classification), Spearman x 100 (embeddings)."""
    if not metrics:
        return None
    if task == "text-classification":
        return float(metrics["accuracy"]) if "accuracy" in metrics else None
    return float(metrics["spearman"]) * 100.0 if "spearman" in metrics else None


def _machine_key() -> dict[str, Any]:
    from edgellm.bench.machine import machine_info

    info = machine_info()
    return {"cpu": info["cpu_model"], "cpus": info["cpu_count"], "arch": info["machine"],
            "versions": {k: v for k, v in info["versions"].items() if k in ("onnxruntime", "openvino", "torch")}}


def _repeat(recipe: Recipe) -> int:
    return max(recipe.evaluate.repeat, MIN_REPEAT)


def _model_call(model: Any, data: Any, tokens: int) -> Callable[[], Any]:
    """One runtime model at batch 1, cycling through validation texts of exactly `tokens` tokens."""
    from edgellm.pipeline import _latency_texts, batch1_call

    padded, _ = _latency_texts(model.encoder.tokenizer, data, tokens, split="validation")
    return batch1_call(model, padded)


class _TeacherClock:
    """The teacher in FP32 PyTorch (loaded once), timed in alternating rounds with the models it is compared with.

    `time(calls)` gives the teacher's p50 in those rounds and each call's; `at_reference(p50, teacher_p50)` quotes a
    timing at the reference teacher p50 (the run's first teacher timing), which removes the machine's drift between
    the timings of a long search (a busier machine slows the teacher and the model alike)."""

    def __init__(self, teacher_folder: Path, recipe: Recipe, data: Any, tokens: int, *, loaded: Any = None) -> None:
        """`loaded`: the teacher already loaded from `teacher_folder` (`load_model`), else it is loaded on first use."""
        self.teacher_folder, self.recipe, self.data, self.tokens = teacher_folder, recipe, data, tokens
        self.reference_ms: float | None = None
        self._loaded = loaded
        self._call: Callable[[], Any] | None = None

    def _teacher_call(self) -> Callable[[], Any]:
        if self._call is None:
            import torch

            from edgellm.bench.stats import cycling
            from edgellm.pipeline import _latency_texts
            from edgellm.runtime.text import plain_tokenizer
            from edgellm.train import load_model

            tm = self._loaded or load_model(self.teacher_folder, task=self.recipe.task)
            net = tm.model.eval()
            texts, _ = _latency_texts(plain_tokenizer(tm.tokenizer), self.data, self.tokens, split="validation")
            feeds = [tm.tokenizer([t], truncation=True, max_length=self.tokens, return_tensors="pt") for t in texts]

            def run(batch: Any) -> Any:
                with torch.inference_mode():
                    return net(**batch)

            self._call = cycling(run, feeds)
        return self._call

    def time(self, calls: dict[str, Callable[[], Any]], *, repeat: int | None = None,
             rounds: int = ROUNDS) -> tuple[float, dict[str, float]]:
        """(teacher p50 ms, {name: p50 ms}) from one interleaved timing; the first one sets the reference."""
        import torch

        from edgellm.bench import time_interleaved

        threads = self.recipe.evaluate.threads
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            stats = time_interleaved({"teacher": self._teacher_call(), **calls}, warmup=10,
                                     repeat=repeat or _repeat(self.recipe), rounds=rounds)
        finally:
            torch.set_num_threads(previous)
        teacher = stats.pop("teacher")["p50_ms"]
        if self.reference_ms is None:
            self.reference_ms = teacher
        return teacher, {name: s["p50_ms"] for name, s in stats.items()}

    def at_reference(self, p50_ms: float, teacher_p50_ms: float | None) -> float:
        if teacher_p50_ms is None or self.reference_ms is None:  # a recorded table of another device
            return p50_ms
        return p50_ms * self.reference_ms / teacher_p50_ms


class _Scorer:
    """Validation score, p50 and size of a plan's deployed model, cached as a `fit-score` stage."""

    def __init__(self, recipe: Recipe, data: Any, cache: StageCache, teacher_folder: Path, teacher_key: str,
                 tokens: int, machine: dict[str, Any], teacher_clock: _TeacherClock) -> None:
        self.recipe, self.data, self.cache = recipe, data, cache
        self.teacher_folder, self.teacher_key, self.teacher_clock = teacher_folder, teacher_key, teacher_clock
        self.tokens, self.machine = tokens, machine
        self._reference: Any = None

    def __call__(self, plan: Plan, stages: EncoderStages) -> dict[str, Any]:
        from edgellm.runtime.tasks import BATCHING  # scores taken through the runtime depend on its batching

        source = stages.stages["quantize" if "quantize" in stages.stages else "export"]
        artifact = source.folder / "artifact"
        material = {"input": source.key, "model": plan.model_name, "tokens": self.tokens, "split": "validation",
                    "threads": self.recipe.evaluate.threads, "repeat": _repeat(self.recipe),
                    "machine": self.machine, "teacher": self.teacher_key, "batching": BATCHING}
        record = self.cache.run("fit-score", material, lambda folder: self._score(plan, artifact))
        numbers = dict(record.metrics)
        numbers["p50_timed_ms"] = numbers["p50_ms"]  # as timed; p50_ms: at the run's reference teacher p50
        numbers["p50_ms"] = self.teacher_clock.at_reference(numbers["p50_ms"], numbers.get("teacher_p50_ms"))
        return numbers

    def _score(self, plan: Plan, artifact: Path) -> dict[str, Any]:
        from edgellm.runtime import load

        data, recipe = self.data, self.recipe
        model = load(artifact, model=plan.model_name, threads=recipe.evaluate.threads, verify=False)
        manifest = read_manifest(artifact)
        entry = next(e for e in manifest.models if e.name == plan.model_name)
        if recipe.task == "text-classification":
            from edgellm.evaluate import evaluate_classifier

            validation = evaluate_classifier(model, data.validation.texts, data.validation.labels)
        else:
            from edgellm.pipeline import _embedding_test, _teacher_vectors

            if self._reference is None:
                self._reference = _teacher_vectors(self.teacher_folder, data.validation.texts, recipe)
            validation = _embedding_test(model.embed(data.validation.texts), self._reference, data)
        teacher_p50, timed = self.teacher_clock.time({"plan": _model_call(model, data, self.tokens)})
        return {"validation": validation, "points": _points(recipe.task, validation),
                "p50_ms": timed["plan"], "teacher_p50_ms": teacher_p50,
                "size_bytes": sum((artifact / f).stat().st_size for f in entry.files),
                "shape": _shape_of_artifact(artifact, manifest, plan)}


def _shape_of_artifact(artifact: Path, manifest: Any, plan: Plan) -> dict[str, Any]:
    """The deployed model's shape, from the manifest's source record (for the cost model's error report)."""
    source = manifest.source or {}
    return {"parameters": source.get("parameters"), "layers": source.get("num_hidden_layers"),
            "cls_only": plan.cls_only}


# --- the cost model ----------------------------------------------------------------------------------------------

TABLE_FORMAT = "edgellm-latency-table"


def target_present(profile: Any) -> tuple[bool, str]:
    """(whether `profile` describes this machine, why not): a CPU profile of this architecture whose INT8 preset is
    this CPU family's. Timings taken here stand for it; for any other device they would not."""
    from edgellm.quantize.presets import detect_preset
    from edgellm.targets import machine_arch

    if profile.device != "cpu":
        return False, f"its device is {profile.device}"
    if profile.arch is not None and profile.arch != machine_arch():
        return False, f"it is {profile.arch}, this machine {machine_arch()}"
    if profile.quantization is not None and profile.quantization.preset != detect_preset():
        return False, f"its CPU family is {profile.quantization.preset}, this machine's {detect_preset()}"
    return True, ""


def _probe_design(space: dict[str, list[Any]], teacher: TeacherShape) -> list[Plan]:
    """Untrained shapes to time: the corners of the space's depths and pruning shares (and [CLS]-only / vocabulary
    variants), enough to fit the cost model's four terms per engine."""
    depths = sorted(space["layers"])
    picked = sorted({depths[0], depths[-1]})
    hmax, fmax = max(space["heads"]), max(space["ffn"])
    cls = True in space["cls_only"]
    trim = True in space["trim_vocab"]
    engine = "probe"  # one shape, timed on every engine of the space
    points = []
    for d in picked:
        points += [Arm(d), Arm(d, hmax, fmax)]
    points += [Arm(depths[-1], hmax, 0.0), Arm(depths[-1], 0.0, fmax)]
    design = [Plan(a, trim, engine, cls) for a in points]
    if cls and False in space["cls_only"]:
        design.append(Plan(Arm(depths[-1]), trim, engine, False))
    if trim and False in space["trim_vocab"]:
        design.append(Plan(Arm(depths[0]), False, engine, cls))
    valid = set(_arms({"layers": depths, "heads": sorted({0.0, hmax}), "ffn": sorted({0.0, fmax})}, teacher))
    return sorted({p for p in design if p.arm in valid})


def _probe(folder: Path, recipe: Recipe, data: Any, teacher_folder: Path, plan: Plan, engines: Sequence[str],
           tokens: int, preset: str | None, teacher_clock: _TeacherClock) -> dict[str, Any]:
    """Export `plan`'s shape with the teacher's (untrained) weights, quantize it for every engine, time each
    (all engines and the teacher in alternating rounds)."""
    from edgellm.artifact import write_manifest
    from edgellm.exporting import encoder_manifest, write_encoder_models
    from edgellm.prune import prune_model
    from edgellm.quantize import quantize_models
    from edgellm.quantize.stage import QuantData, int8_name
    from edgellm.runtime import load
    from edgellm.train import build_student, load_model

    tm = load_model(teacher_folder, task=recipe.task)
    model = tm.model
    if plan.arm.layers < model.config.num_hidden_layers:
        model = build_student(model, DistillConfig(num_layers=plan.arm.layers))
    if plan.arm.pruned:
        prune_model(model, config=PruneConfig(heads=plan.arm.heads, ffn=plan.arm.ffn, importance="magnitude"))
    tokenizer = tm.tokenizer
    if plan.trim_vocab:
        from edgellm.vocab import trim_vocabulary

        trimmed = trim_vocabulary(model, tokenizer, _trim_texts(recipe, data))
        model, tokenizer = trimmed.model, trimmed.tokenizer
    model.eval()
    work = folder / "probe"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
    formats = sorted({_FORMAT[e.split("/")[0]] for e in engines}, key=lambda f: f != "onnx")
    max_length = recipe.export.max_length or tokens
    entries = write_encoder_models(model, tokenizer, work, task=recipe.task, max_length=max_length, formats=formats,
                                   texts=list(data.validation.texts[:8]) or list(data.train.texts[:8]),
                                   atol=recipe.export.atol, cls_only=plan.cls_only)
    manifest = encoder_manifest(model, task=recipe.task, models=entries, max_length=max_length,
                                source=recipe.teacher, embedding=tm.embedding)
    if recipe.task == "text-classification":
        manifest.labels = list(tm.labels or manifest.labels or [])
    write_manifest(work, manifest)
    names = list(data.labels or [])
    labels = [names[i] if names else i for i in data.validation.labels[:16]] \
        if recipe.task == "text-classification" else None
    qdata = QuantData(list(data.train.texts[:64]), list(data.validation.texts[:16]), labels, own_texts=True)
    shape = _shape_of(model, labels=len(names) if recipe.task == "text-classification" else 0,
                      cls_only=bool(entries[0].metrics.get("cls_only_last_layer")))
    rows, calls = [], {}
    for engine in engines:
        backend, mode = engine.split("/")
        name = f"{_PREFIX[backend]}-fp32"
        if mode != "fp32":
            config = dataclasses.replace(recipe.quantize or QuantizeConfig(), mode=mode, backends=[backend],
                                         preset=preset, tolerance=None,
                                         calibration_samples=min(_PROBE_CALIBRATION, len(qdata.calibration)))
            quantize_models(work, manifest, config=config, data=qdata, threads=recipe.evaluate.threads,
                            suffix=f"-{mode}", own_texts=True)
            write_manifest(work, manifest)
            name = int8_name(name) + f"-{mode}"
        entry = next(e for e in manifest.models if e.name == name)
        runtime = load(work, model=name, threads=recipe.evaluate.threads, verify=False)
        calls[engine] = _model_call(runtime, data, tokens)
        rows.append({"engine": engine, "tokens": tokens, "threads": recipe.evaluate.threads, "probe": plan.id,
                     "shape": shape.to_dict(), "size_bytes": sum((work / f).stat().st_size for f in entry.files)})
    teacher_p50, timed = teacher_clock.time(calls)
    for row in rows:
        row["p50_ms"], row["teacher_p50_ms"] = timed[row["engine"]], teacher_p50
    calls.clear()
    shutil.rmtree(work)  # only the timings are kept
    return {"rows": rows}


def _read_table(profile: Any, target: str, tokens: int) -> list[dict[str, Any]]:
    from edgellm.targets import target_file

    path = target_file(target).parent / str(profile.latency_table)
    if not path.is_file():
        raise ConfigError(f"target {profile.name}: latency_table {profile.latency_table!r} does not exist ({path})")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a latency table ({exc})") from exc
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT or not isinstance(table.get("rows"), list):
        raise ConfigError(f"{path}: not a latency table written by edgellm fit (format {TABLE_FORMAT!r})")
    rows = [r for r in table["rows"] if int(r.get("tokens", -1)) == tokens]
    if not rows:
        lengths = sorted({r.get("tokens") for r in table["rows"]})
        raise ConfigError(f"{path}: no timings at {tokens} tokens (it has {lengths}); give --at-length one of them")
    return rows


# --- the search --------------------------------------------------------------------------------------------------

class _Clock:
    """The search's wall clock against --budget-minutes, with running estimates of what work costs."""

    def __init__(self, minutes: float | None) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + minutes * 60.0 if minutes else None
        self.train_rates: list[float] = []  # seconds per (epoch x training MAC)
        self.variant_seconds: list[float] = []  # export + quantize + score of one plan variant

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def rate(self) -> float:
        return sorted(self.train_rates)[len(self.train_rates) // 2] if self.train_rates else 0.0

    def variant(self) -> float:
        return sorted(self.variant_seconds)[len(self.variant_seconds) // 2] if self.variant_seconds else 0.0

    def reserve(self) -> float:
        """Time kept for the end: the chosen plan's test-split measurements, publishing and the final timing."""
        return 3.0 * self.variant()

    def fits(self, seconds: float) -> bool:
        return seconds + self.reserve() <= self.left()


@dataclass
class _Fit:
    """Everything the search steps share."""

    recipe: Recipe
    data: Any
    cache: StageCache
    say: Callable[[str], None]
    progress: bool
    budget: Budget
    tokens: int
    profile: Any
    preset: str | None
    teacher: TeacherShape
    teacher_key: str
    teacher_folder: Path
    reference: Reference
    constraints: list[dict[str, Any]]
    clock: _Clock
    eta: int
    rungs: int
    margin: dict[str, float] = field(default_factory=lambda: {"latency": MARGIN, "size": MARGIN})
    complete_depths: set[int] = field(default_factory=set)
    progress_of: dict[Arm, float] = field(default_factory=dict)  # share of the own training schedule reached
    variants_per_arm: int = 1  # plans built per trained arm (vocabulary x engine), for time estimates
    present: bool = True  # the target is this machine: latency is measured here, else predicted from its table
    records: dict[Plan, dict[str, Any]] = field(default_factory=dict)  # every plan's record

    @property
    def floor(self) -> float | None:
        """The validation score a plan must reach (None without an accuracy budget)."""
        if self.budget.max_drop is not None:
            return self.reference.points - self.budget.max_drop
        if self.budget.min_retention is not None:
            return self.reference.points * self.budget.min_retention / 100.0
        return None

    def stages(self, recipe: Recipe, *, defer: bool = True) -> EncoderStages:
        return EncoderStages(recipe, self.data, self.cache, progress=self.progress, defer=defer)

    def plan_recipe(self, plan: Plan) -> Recipe:
        return plan_recipe(self.recipe, plan, teacher_layers=self.teacher.layers, preset=self.preset,
                           at_length=self.tokens)

    def own_epochs(self, recipe: Recipe) -> float:
        if recipe.prune is not None:
            return recipe.prune.recovery_epochs
        return recipe.distill.epochs if recipe.distill is not None else 0.0

    def estimate(self, arm: Arm, to: float) -> float:
        """Seconds to train `arm` from where it stands to share `to` of its schedule (its student's distillation
        first, when a pruned arm needs it)."""
        rate = self.clock.rate()
        if not rate:
            return 0.0
        recipe = _arm_recipe(self.recipe, arm, self.teacher, self.tokens)
        length = self.data.max_length or self.tokens
        seconds = rate * max(0.0, to - self.progress_of.get(arm, 0.0)) * self.own_epochs(recipe) \
            * self.teacher.train_macs(arm, length)
        if recipe.prune is not None and recipe.distill is not None and arm.layers not in self.complete_depths:
            done = self.progress_of.get(Arm(arm.layers), 0.0)
            seconds += rate * (1.0 - done) * recipe.distill.epochs * self.teacher.train_macs(Arm(arm.layers), length)
        return seconds


    def tail(self, alive: Sequence[Arm]) -> float:
        """What the search needs after this rung at least: one arm (the costliest left) trained to the end and
        its variants built."""
        if not alive:
            return 0.0
        arm = max(alive, key=lambda a: self.teacher.train_macs(a, self.tokens))
        return self.estimate(arm, 1.0) + self.variants_per_arm * self.clock.variant()


def _stage_points(fit: _Fit, stage: str, metrics: dict[str, Any]) -> float | None:
    """The validation score a finished training stage recorded (torch, best checkpoint)."""
    if stage == "distill":
        return _points(fit.recipe.task, (metrics.get("training") or {}).get("validation"))
    if stage == "prune":
        return _points(fit.recipe.task, ((metrics.get("report") or {}).get("metrics") or {}).get("after"))
    return fit.reference.points


def _rung_file(fit: _Fit, stages: EncoderStages, recipe: Recipe, stage: str, fraction: float) -> Path:
    key = stage_key({"fit-rung": 1, "base": stages.base, "teacher": fit.teacher_key, "recipe": recipe.to_dict(),
                     "stage": stage, "fraction": round(fraction, 6)})
    return fit.cache.root / "fit-rungs" / f"{stage}-{key}.json"


def _train_arm(fit: _Fit, arm: Arm, fraction: float, record: dict[str, Any]) -> float | None:
    """Train `arm` to `fraction` of its own schedule (continuing from where it stopped) and return its validation
    score there; None when it is dropped (its student cannot reach the accuracy floor)."""
    recipe = _arm_recipe(fit.recipe, arm, fit.teacher, fit.tokens)
    stages = fit.stages(recipe)
    own = "prune" if recipe.prune is not None else ("distill" if recipe.distill is not None else "teacher")
    started = time.monotonic()
    length = fit.data.max_length or fit.tokens
    units = 0.0
    if own == "prune" and recipe.distill is not None:
        if arm.layers not in fit.complete_depths:
            units += (1.0 - fit.progress_of.get(Arm(arm.layers), 0.0)) * recipe.distill.epochs \
                * fit.teacher.train_macs(Arm(arm.layers), length)
        parent = stages.run(until="distill")["distill"]
        fit.complete_depths.add(arm.layers)
        fit.progress_of[Arm(arm.layers)] = 1.0
        student = _stage_points(fit, "distill", parent.metrics)
        record["student_points"] = student
        if fit.floor is not None and student is not None and student < fit.floor - BOUND_SLACK:
            record["status"] = "dropped"
            record["why"] = (f"its {arm.layers}-layer student scores {student:.2f} on validation, more than "
                             f"{BOUND_SLACK:g} point below the floor {fit.floor:.2f}; pruning it would not recover")
            fit.say(f"[fit] {arm.id}: {record['why']}")
            return None
    rung = _rung_file(fit, stages, recipe, own, fraction)
    if fraction < 1.0 and rung.is_file():
        saved = json.loads(rung.read_text(encoding="utf-8"))
        fit.say(f"[fit] {arm.id}: rung at {fraction:.2g} of its training already scored {saved['points']:.2f}")
        fit.progress_of[arm] = max(fit.progress_of.get(arm, 0.0), fraction)
        return float(saved["points"])
    before = fit.progress_of.get(arm, 0.0)
    try:
        done = stages.run(until=own, pause={own: fraction} if fraction < 1.0 else None)[own]
        points = _stage_points(fit, own, done.metrics)
        reached = 1.0
        trained = not done.cached
        if own == "distill":
            fit.complete_depths.add(arm.layers)
    except TrainingPaused as paused:
        scale = 100.0 if fit.recipe.task == "feature-extraction" else 1.0
        points = paused.score * scale if paused.score is not None else None
        reached = paused.step / max(paused.total, 1)
        trained = True
        rung.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rung, json.dumps({"arm": arm.id, "stage": own, "key": paused.key, "fraction": fraction,
                                            "step": paused.step, "total": paused.total, "points": points,
                                            "evaluation": paused.evaluation, "best": paused.best}, indent=1,
                                           default=jsonable))
    fit.progress_of[arm] = max(before, reached)
    if own != "teacher":
        units += max(0.0, reached - before) * fit.own_epochs(recipe) * fit.teacher.train_macs(arm, length)
    seconds = time.monotonic() - started
    if trained and units > 0 and seconds > 1.0:
        fit.clock.train_rates.append(seconds / units)
    return points


def _rank(fit: _Fit, arms: Sequence[Arm], scores: dict[Arm, float], best_latency: dict[Arm, float]) -> list[Arm]:
    """Best first: by validation score (objective accuracy); by predicted speed among those at the accuracy floor,
    then by score (objective latency)."""
    if fit.budget.objective == "accuracy" or fit.floor is None:
        return sorted(arms, key=lambda a: (-scores[a], best_latency.get(a, math.inf), a))
    floor = fit.floor
    return sorted(arms, key=lambda a: (scores[a] < floor, best_latency.get(a, math.inf) if scores[a] >= floor
                                       else -scores[a], a))


def _halving(fit: _Fit, arms: list[Arm], best_latency: dict[Arm, float]) -> tuple[list[Arm], dict[Arm, dict]]:
    """Successive halving over the arms' training; returns the arms that completed it, best first, and a record of
    every arm's rungs."""
    fractions = [float(fit.eta) ** -(fit.rungs - 1 - r) for r in range(fit.rungs)]
    records: dict[Arm, dict[str, Any]] = {a: {"arm": a.id, "rungs": [], "status": "candidate"} for a in arms}
    # prior order: what a cut by time keeps first (larger models score higher; the fastest for objective latency)
    if fit.budget.objective == "accuracy":
        alive = sorted(arms, key=lambda a: (-fit.teacher.train_macs(a, fit.tokens), a))
    else:
        alive = sorted(arms, key=lambda a: (best_latency.get(a, math.inf), a))
    finalists: list[Arm] = []
    for r, fraction in enumerate(fractions):
        last = r == len(fractions) - 1
        scores: dict[Arm, float] = {}
        fit.say(f"[fit] rung {r + 1} of {len(fractions)}: {len(alive)} plan(s) trained to {fraction:.3g} of their "
                "distillation schedule")
        tail = 0.0 if last else fit.tail(alive)
        for arm in alive:
            if scores and not fit.clock.fits(fit.estimate(arm, fraction) + tail):
                records[arm]["status"] = "stopped"
                records[arm]["why"] = f"the time budget ran out before rung {r + 1}"
                continue
            points = _train_arm(fit, arm, fraction, records[arm])
            if points is None:
                continue
            records[arm]["rungs"].append({"rung": r + 1, "fraction": fraction, "points": points})
            scores[arm] = points
        ranked = _rank(fit, list(scores), scores, best_latency)
        if last:
            finalists = ranked
            for arm in ranked:
                records[arm]["status"] = "trained"
            break
        keep = max(1, math.ceil(len(ranked) / fit.eta))
        for arm in ranked[keep:]:
            records[arm]["status"] = "stopped"
            records[arm]["why"] = f"not in the best {keep} of {len(ranked)} at rung {r + 1}"
        alive = ranked[:keep]
        fit.say(f"[fit] rung {r + 1}: " + ", ".join(f"{a.id} {scores[a]:.2f}" for a in ranked)
                + f"; {', '.join(a.id for a in alive)} continue")
    return finalists, records


# --- choosing ----------------------------------------------------------------------------------------------------

_MARGIN_OF = {"p50_ms": "latency", "speedup": "latency", "size_mb": "size", "shrink": "size"}


def _judge(fit: _Fit, numbers: dict[str, Any], *, margin: dict[str, float] | None = None) -> dict[str, Any]:
    """Every constraint on `numbers` (p50_ms, size_bytes, points): value, shortfall, met (None: unknown).
    `margin` ({"latency": ..., "size": ...}) widens the speed and size limits for predicted numbers."""
    values = _quantities(numbers, fit.reference)
    out = {}
    for c in fit.constraints:
        value = values[c["quantity"]]
        kind = _MARGIN_OF.get(c["quantity"])
        miss = _shortfall(c, value, (margin or {}).get(kind, 0.0) if kind else 0.0)
        out[c["flag"]] = {"value": value, "limit": c["limit"], "shortfall": miss, "met": None if miss is None
                          else miss <= 1e-12}
    return out


def _better(fit: _Fit, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether plan record `a` beats `b` for the objective (both measured and within every budget)."""
    def key(r: dict[str, Any]) -> tuple:
        m = r["measured"]
        if fit.budget.objective == "accuracy":
            return (-m["points"], m["p50_ms"], m["size_bytes"], r["plan"])
        return (m["p50_ms"], -m["points"], m["size_bytes"], r["plan"])

    return key(a) < key(b)


def _numbers(r: dict[str, Any]) -> dict[str, Any]:
    """A plan record's best-known numbers: measured where it was, else predicted (and a rung score as accuracy)."""
    measured = r.get("measured") or {}
    out = {"p50_ms": measured.get("p50_ms", r["predicted"]["p50_ms"]),
           "size_bytes": measured.get("size_bytes", r["predicted"]["size_bytes"]),
           "points": measured.get("points", r.get("points_estimate"))}
    return out


def _failure(fit: _Fit, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the constraints no plan meets, with the best value reached; the plans closest to meeting every one)."""
    measured = [r for r in records if r.get("measured")]
    pool = measured or records
    failed = []
    for c in fit.constraints:
        others = [r for r in pool
                  if all(j["met"] is not False for flag, j in r["judged"].items() if flag != c["flag"])]
        candidates = [r for r in (others or pool) if r["judged"][c["flag"]]["value"] is not None]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: (r["judged"][c["flag"]]["shortfall"], r["plan"]))
        if best["judged"][c["flag"]]["met"]:
            continue
        failed.append({"flag": c["flag"], "limit": c["limit"], "unit": c["unit"],
                       "best": best["judged"][c["flag"]]["value"], "plan": best["plan"],
                       "measured": bool(best.get("measured")), "among": "plans within the other budgets"
                       if others else "all plans"})
    closest = sorted(pool, key=lambda r: (sum(j["shortfall"] or 0.0 for j in r["judged"].values()),
                                          -(_numbers(r)["points"] or 0.0), r["plan"]))[:5]
    if not failed and closest:  # each budget alone is met by some plan, but no plan meets them together
        failed = [{"flag": flag, "limit": j["limit"], "best": j["value"], "plan": closest[0]["plan"],
                   "measured": bool(closest[0].get("measured")), "among": "the closest plan (the budgets are met "
                   "one at a time, never together)"} for flag, j in closest[0]["judged"].items() if j["met"] is False]
    return failed, [_closest_entry(r) for r in closest]


def _closest_entry(r: dict[str, Any]) -> dict[str, Any]:
    numbers = _numbers(r)
    return {"plan": r["plan"], "p50_ms": numbers["p50_ms"], "size_mb": numbers["size_bytes"] / 1e6,
            "points": numbers["points"], "measured": bool(r.get("measured")),
            "misses": {flag: j["value"] for flag, j in r["judged"].items() if j["met"] is False},
            "unknown": [flag for flag, j in r["judged"].items() if j["met"] is None]}


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    """A plan record for frontier.json: each budget's verdict instead of its working."""
    out = {k: v for k, v in r.items() if k != "judged"}
    out["meets"] = {flag: j["met"] for flag, j in r["judged"].items()}
    return out


def _estimate_unbuilt(records: dict[Plan, dict[str, Any]]) -> None:
    """The best guess of an unbuilt plan's validation score: its [CLS]-only twin's (the same outputs), else a
    built variant's with the same student and vocabulary (the engines differ by their INT8 error only), else the
    student's own score in torch (set during the search)."""
    built = {p: r for p, r in records.items() if r.get("measured")}
    for plan, r in records.items():
        if r.get("measured") or "points_estimate" not in r:
            continue
        twin = dataclasses.replace(plan, cls_only=not plan.cls_only)
        same = sorted((p for p in built if p.arm == plan.arm and p.trim_vocab == plan.trim_vocab),
                      key=lambda p: (p.engine != plan.engine, p.id))
        if twin in built:
            r["points_estimate"] = built[twin]["measured"]["points"]
            r["points_source"] = f"{twin.id} (measured; the same outputs)"
        elif same:
            r["points_estimate"] = built[same[0]]["measured"]["points"]
            r["points_source"] = f"{same[0].id} (measured; the same student and vocabulary)"


def _frontier(records: list[dict[str, Any]]) -> list[str]:
    """Plans no other plan beats on accuracy, latency and size at once (best-known numbers; plans without any
    accuracy number are left out)."""
    pts = [(r["plan"], _numbers(r)) for r in records]
    pts = [(p, n) for p, n in pts if n["points"] is not None]
    out = []
    for plan, n in pts:
        keys = ("points", "p50_ms", "size_bytes")
        signs = {"points": -1.0, "p50_ms": 1.0, "size_bytes": 1.0}  # lower is better after the sign
        dominated = any(all(signs[k] * m[k] <= signs[k] * n[k] for k in keys)
                        and any(signs[k] * m[k] < signs[k] * n[k] for k in keys) for q, m in pts if q != plan)
        if not dominated:
            out.append(plan)
    return sorted(out, key=lambda p: next(n["p50_ms"] for q, n in pts if q == p))


# --- the verb ----------------------------------------------------------------------------------------------------

@dataclass
class FitResult:
    """What `fit` found. `ok`: a plan meets every budget (on the validation split and the measurements of the
    search); `chosen` is its record with the final test-split and same-run latency numbers; otherwise `failed`
    names the budgets no plan met and `closest` the nearest plans. `record` is frontier.json's content."""

    ok: bool
    output: Path
    chosen: dict[str, Any] | None
    failed: list[dict[str, Any]]
    closest: list[dict[str, Any]]
    frontier: list[str]
    record: dict[str, Any]
    artifact: Path | None = None
    recipe: Path | None = None

    @property
    def message(self) -> str:
        """One line: the chosen plan, or which budget no plan met."""
        if self.ok and self.chosen:
            final = self.chosen.get("final") or {}
            m = self.chosen["measured"]
            missed = [k for k, j in (final.get("judged") or {}).items() if not j["met"]]
            return (f"chosen {self.chosen['plan']}: validation {m['points']:.2f}, p50 {m['p50_ms']:.2f} ms, "
                    f"{m['size_bytes'] / 1e6:.1f} MB"
                    + (f"; test {final['test_points']:.2f} (teacher {final['teacher_test_points']:.2f}), "
                       + (f"{final['speedup']:.2f}x the teacher's speed in the same run" if final.get("speedup")
                          else f"p50 {final['p50_ms']:.2f} ms predicted for the device") if final else "")
                    + (f"; measured after the choice it misses {', '.join(missed)}" if missed else ""))
        if not self.failed:
            return "no plan meets the budget: no plan finished its training and measurements (see frontier.md)"
        return "no plan meets the budget: " + "; ".join(_failed_text(f) for f in self.failed)


def _failed_text(f: dict[str, Any]) -> str:
    value = f.get("best")
    shown = "unknown" if value is None else f"{value:.3g}"
    return (f"{f['flag']} {f['limit']:g} (best {'measured' if f.get('measured') else 'predicted'}: {shown}, "
            f"{f['plan']})")


def _is_fit_output(folder: Path) -> bool:
    return (folder / FIT_FILES["json"]).is_file()


def fit(
    recipe: Recipe,
    *,
    target: str,
    output: str | os.PathLike[str],
    max_ms: float | None = None,
    at_length: int | None = None,
    max_mb: float | None = None,
    min_speedup: float | None = None,
    min_shrink: float | None = None,
    max_drop: float | None = None,
    min_retention: float | None = None,
    budget_minutes: float | None = None,
    space: dict[str, list[Any]] | Sequence[str] | None = None,
    eta: int = 3,
    rungs: int = 2,
    work_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> FitResult:
    """Search the plans of `recipe` for `target` under the budget (see the module docstring); write OUTPUT.

    Args:
        space: axes to search instead of the recipe's neighbourhood ({"layers": [2, 3], ...} or `AXIS=V1,V2`
            strings): layers, heads, ffn, trim_vocab, engine, cls_only.
        eta, rungs: successive halving keeps the best 1/eta at each of `rungs` rungs (1 trains every plan fully).
    Returns a FitResult; no plan meeting the budget is a result (ok False), not an exception (the CLI turns it
    into NoPlanError).
    """
    from edgellm.pipeline import _check_text_sources, _echo
    from edgellm.targets import load_target

    say = _echo(echo)
    clock = _Clock(budget_minutes)
    out = check_output(output, overwrite=overwrite, owned=_is_fit_output, what="an edgellm fit output")
    work = Path(work_dir) if work_dir else default_work_dir(out)
    if recipe.task == "text-generation":
        raise ConfigError("edgellm fit searches encoder recipes (text-classification, feature-extraction); "
                          "text-generation plans (depth, width, weight bits) are not searched yet: see "
                          "python -m bench.lm_frontier for a decoder frontier")
    budget = Budget(max_ms=max_ms, at_length=at_length, max_mb=max_mb, min_speedup=min_speedup,
                    min_shrink=min_shrink, max_drop=max_drop, min_retention=min_retention,
                    budget_minutes=budget_minutes)
    budget.check()
    if not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"eta = {eta!r}: successive halving keeps 1/eta of the plans per rung; give 2 or more")
    if not isinstance(rungs, int) or rungs < 1:
        raise ConfigError(f"rungs = {rungs!r}: give 1 (every plan trained fully) or more")
    profile = load_target(target)
    if profile.device != "cpu":
        raise UnsupportedTargetError(f"target {profile.name}: fit searches plans for CPU targets; {profile.device} "
                                     "devices (static shapes, their own engines) are not searched yet")
    present, why_not = target_present(profile)
    if not present and not profile.latency_table:
        raise UnsupportedTargetError(
            f"target {profile.name} is not this machine ({why_not}) and its profile records no latency_table: run "
            "edgellm fit on such a machine, and name the latency-table.json it writes in the profile")
    if not present and budget.min_speedup is not None:
        raise ConfigError(f"--min-speedup compares with the teacher timed on the device; {profile.name} is not this "
                          f"machine ({why_not}): give --max-ms instead")
    tokens = budget.at_length or recipe.evaluate.latency_length
    for name, limit in (("export.max_length", recipe.export.max_length), ("data.max_length", recipe.data.max_length)):
        if limit and tokens > limit:
            raise ConfigError(f"--at-length {tokens} is longer than the recipe's {name} {limit}: no input that "
                              f"long reaches the model; give --at-length <= {limit}, or raise {name}")
    given = parse_space(space) if space is not None and not isinstance(space, dict) else dict(space or {})
    for axis in given:
        if axis not in AXES:
            raise ConfigError(f"space axis {axis!r} is not one of {', '.join(AXES)}")
    _check_text_sources(recipe)
    table_rows = None if present else _read_table(profile, target, tokens)  # a missing table fails now

    # -- teacher: its stage, its numbers in this run --------------------------------------------------------
    data = load_encoder_data(recipe, say)
    cache = StageCache(work, say)
    base = dataclasses.replace(recipe, evaluate=dataclasses.replace(recipe.evaluate, latency_length=tokens),
                               targets=[])
    stages = EncoderStages(base, data, cache, progress=progress, defer=True)
    teacher_stage = stages.run(until="teacher")["teacher"]
    teacher_folder = stages.teacher_folder
    from edgellm.train import load_model

    tm = load_model(teacher_folder, task=recipe.task)
    if tokens > int(getattr(tm.model.config, "max_position_embeddings", tokens)):
        raise ConfigError(f"--at-length {tokens} is longer than the teacher's {tm.model.config.max_position_embeddings}"
                          " positions")
    teacher = _teacher_shape(recipe, data, tm)
    ref_points = _points(recipe.task, (teacher_stage.metrics.get("training") or {}).get("validation")) \
        if recipe.task == "text-classification" else 100.0
    if ref_points is None:
        raise ConfigError("the teacher has no validation score (the validation split is empty): fit chooses on "
                          "validation; set data.split.validation > 0")
    say(f"[fit] timing the teacher (FP32 PyTorch, {tokens} tokens, {recipe.evaluate.threads} threads)")
    teacher_clock = _TeacherClock(teacher_folder, base, data, tokens, loaded=tm)  # it keeps the teacher for the run
    reference = Reference(points=ref_points, p50_ms=teacher_clock.time({})[0],
                          size_bytes=sum(f.stat().st_size for f in teacher_folder.glob("*.safetensors")),
                          metric="accuracy %" if recipe.task == "text-classification" else "Spearman x 100")
    say(f"[fit] teacher: validation {reference.points:.2f}, p50 {reference.p50_ms:.2f} ms at {tokens} tokens, "
        f"{reference.size_bytes / 1e6:.1f} MB")
    preset = profile.quantization.preset if profile.quantization else None
    axes = _space(recipe, teacher, profile, given)
    arms = _arms(axes, teacher)
    if not arms:
        raise ConfigError(f"the space {axes} holds no plan: every pruning share would empty a layer")
    plans = _plans(axes, arms)
    fit_ = _Fit(recipe=base, data=data, cache=cache, say=say, progress=progress, budget=budget, tokens=tokens,
                profile=profile, preset=preset, teacher=teacher, teacher_key=teacher_stage.key,
                teacher_folder=teacher_folder, reference=reference,
                constraints=_constraints(budget, reference), clock=clock, eta=eta, rungs=rungs, present=present)
    say(f"[fit] {len(plans)} plans: " + "; ".join(f"{k} {v}" for k, v in axes.items()))

    # -- cost model --------------------------------------------------------------------------------------------
    machine = _machine_key()
    if present:
        rows = []
        design = _probe_design(axes, teacher)
        say(f"[fit] timing {len(design)} untrained shapes on {len(axes['engine'])} engine(s) for the cost model")
        for point in design:
            material = {"teacher": teacher_stage.key, "probe": dataclasses.asdict(point), "engines": axes["engine"],
                        "tokens": tokens, "threads": base.evaluate.threads, "repeat": _repeat(base),
                        "machine": machine, "preset": preset, "quantize": to_dict(base.quantize),
                        "export": to_dict(base.export), "data": stages.base["data"]}
            record = cache.run("fit-probe", material, lambda folder, point=point: _probe(
                folder, base, data, teacher_folder, point, axes["engine"], tokens, preset, teacher_clock))
            rows += record.metrics["rows"]
        table = {"format": TABLE_FORMAT, "version": 1, "target": profile.name, "machine": machine,
                 "teacher": recipe.teacher, "threads": base.evaluate.threads, "rows": rows}
    else:
        rows = table_rows or []
        table = None
        say(f"[fit] {profile.name} is not this machine ({why_not}): latency and size from its recorded table "
            f"({len(rows)} timings)")
    model = LatencyModel.fit([{**r, "p50_ms": teacher_clock.at_reference(r["p50_ms"], r.get("teacher_p50_ms"))}
                              for r in rows], tokens=tokens)
    missing = [e for e in axes["engine"] if e not in model.engines]
    if missing:
        raise ConfigError(f"the latency table of {profile.name} has no timings for {missing}; its engines: "
                          f"{sorted(model.engines)}")
    fit_.margin = {"latency": max(MARGIN, 2.0 * max(e.fit_error_pct for e in model.engines.values()) / 100.0),
                   "size": max(MARGIN, 2.0 * max(e.size_error_pct for e in model.engines.values()) / 100.0)}
    say("[fit] cost model: " + ", ".join(f"{e.engine} fits its {e.rows} shapes within {e.fit_error_pct:.1f}% "
                                         "(median)" for e in model.engines.values()))

    records: dict[Plan, dict[str, Any]] = fit_.records
    for plan in plans:
        p50, size = model.predict(plan.engine, teacher.plan_shape(plan))
        records[plan] = {**plan.describe(), "predicted": {"p50_ms": round(p50, 4), "size_bytes": int(size)},
                         "status": "predicted"}
    for plan, r in records.items():
        r["judged"] = _judge(fit_, r["predicted"], margin=fit_.margin)  # accuracy unknown yet: speed and size
        if any(j["met"] is False for j in r["judged"].values()):
            r["status"] = "outside the budget (predicted)"
    candidates = [p for p, r in records.items() if r["status"] == "predicted"]
    best_latency: dict[Arm, float] = {}
    for p in candidates:
        best_latency[p.arm] = min(best_latency.get(p.arm, math.inf), records[p]["predicted"]["p50_ms"])
    candidate_arms = sorted({p.arm for p in candidates})
    fit_.variants_per_arm = max(1, len({(p.trim_vocab, p.engine) for p in candidates}))
    say(f"[fit] {len(candidates)} of {len(plans)} plans ({len(candidate_arms)} to train) are predicted within "
        f"the speed and size budgets (margins: latency {fit_.margin['latency']:.0%}, size {fit_.margin['size']:.0%})")

    # -- search ------------------------------------------------------------------------------------------------
    arm_records: dict[Arm, dict[str, Any]] = {}
    finalists: list[Arm] = []
    if candidate_arms:
        finalists, arm_records = _halving(fit_, candidate_arms, best_latency)
    for plan, r in records.items():
        a = arm_records.get(plan.arm)
        if a and not a["rungs"] and a.get("student_points") is not None:
            r["points_estimate"] = a["student_points"]
            r["points_source"] = "its unpruned student in torch (the plan was dropped before pruning)"
        if a and a["rungs"]:
            last = a["rungs"][-1]
            r["points_estimate"] = last["points"]
            when = "completed" if last["fraction"] >= 1 else f"rung {last['rung']}"
            r["points_source"] = f"torch validation, {when} training (before export and quantization)"
    measured: list[Plan] = []
    order = sorted([p for p in candidates if p.arm in finalists],
                   key=lambda p: (finalists.index(p.arm), records[p]["predicted"]["p50_ms"], p))
    scorer = _Scorer(base, data, cache, teacher_folder, teacher_stage.key, tokens, machine, teacher_clock)
    candidate_set = set(candidates)
    for plan in order:
        twin = dataclasses.replace(plan, cls_only=True)
        if not plan.cls_only and twin in candidate_set:
            records[plan]["status"] = "predicted"
            records[plan]["why"] = "its [CLS]-only twin computes the same outputs, faster; only the twin is built"
            continue
        if measured and not clock.fits(clock.variant()):
            records[plan]["why"] = "not built: the time budget ran out"
            continue
        started = time.monotonic()
        plan_stages = fit_.stages(fit_.plan_recipe(plan))
        plan_stages.run(until="quantize")
        numbers = scorer(plan, plan_stages)
        if not present:  # timed here, not on the device: its latency is the table's prediction
            numbers = {**numbers, "p50_here_ms": numbers["p50_ms"], "p50_ms": records[plan]["predicted"]["p50_ms"]}
        if time.monotonic() - started > 1.0:
            clock.variant_seconds.append(time.monotonic() - started)
        records[plan]["measured"] = {k: numbers[k] for k in ("points", "p50_ms", "size_bytes", "validation",
                                                             "p50_here_ms", "p50_timed_ms", "teacher_p50_ms")
                                     if k in numbers}
        records[plan]["status"] = "measured"
        predicted = records[plan]["predicted"]["p50_ms"]
        records[plan]["error_pct"] = (predicted - numbers["p50_ms"]) / numbers["p50_ms"] * 100.0 if present else None
        records[plan]["judged"] = _judge(fit_, numbers)
        measured.append(plan)
        say(f"[fit] {plan.id}: validation {numbers['points']:.2f}, p50 {numbers['p50_ms']:.2f} ms (predicted "
            f"{predicted:.2f}), {numbers['size_bytes'] / 1e6:.2f} MB")
    _estimate_unbuilt(records)
    for plan, r in records.items():
        if "measured" not in r:
            r["judged"] = _judge(fit_, _numbers(r), margin=fit_.margin)
            a = arm_records.get(plan.arm)
            if a and r["status"] == "predicted":
                r["status"] = a["status"] if a["status"] != "trained" else "trained, not built"
                r.setdefault("why", a.get("why"))

    meets = [records[p] for p in measured if all(j["met"] for j in records[p]["judged"].values())]
    chosen = None
    for r in meets:
        if chosen is None or _better(fit_, r, chosen):
            chosen = r
    plan_list = list(records.values())
    failed, closest = ([], []) if chosen else _failure(fit_, plan_list)
    errors = [abs(records[p]["error_pct"]) for p in measured if records[p].get("error_pct") is not None]
    record: dict[str, Any] = {
        "format": "edgellm-fit", "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": recipe.name or None, "teacher": recipe.teacher, "task": recipe.task, "target": profile.name,
        "target_present": present, "budget": budget.flags(), "objective": budget.objective, "tokens": tokens,
        "threads": base.evaluate.threads, "machine": machine,
        "reference": dataclasses.asdict(reference), "floor": fit_.floor,
        "space": axes, "search": {"eta": eta, "rungs": rungs, "arms": [arm_records.get(a, {"arm": a.id})
                                                                      for a in candidate_arms],
                                  "finalists": [a.id for a in finalists]},
        "cost_model": {"engines": model.to_dict(), "margin": fit_.margin,
                       "median_error_pct": float(sorted(errors)[len(errors) // 2]) if errors else None,
                       "measured_plans": len(errors),
                       "source": "timed here" if present else f"the {profile.name} profile's table"},
        "plans": [],  # filled in below, once the chosen plan has its final numbers
        "frontier": _frontier(plan_list),
        "chosen": None, "failed": failed, "closest": closest,
    }
    if errors:
        say(f"[fit] cost model vs the {len(errors)} measured plan(s): median error "
            f"{record['cost_model']['median_error_pct']:.1f}%")

    # -- the chosen plan: test split once, artifact, same-run timing; then the files ---------------------------
    with atomic_folder(out, overwrite=overwrite, owned=_is_fit_output, what="an edgellm fit output") as staged:
        if chosen is not None:
            plan = next(p for p in measured if records[p] is chosen)
            say(f"[fit] chose {plan.id}; measuring it on the test split and publishing its artifact")
            final_stages = fit_.stages(fit_.plan_recipe(plan), defer=False)
            final_stages.run()
            result = final_stages.publish(staged / FIT_FILES["artifact"], overwrite=False)
            chosen["final"] = _final(fit_, final_stages, result, plan)
            chosen["final"]["judged"] = _final_judged(fit_, chosen["final"])
            record["chosen"] = chosen["plan"]
            _write_recipe(staged / FIT_FILES["recipe"], fit_.plan_recipe(plan), record, chosen)
        record["plans"] = [_slim(r) for r in sorted(plan_list, key=lambda r: r["plan"])]
        record["elapsed_s"] = round(clock.elapsed(), 1)
        if table is not None:
            (staged / FIT_FILES["table"]).write_text(json.dumps(table, indent=1, default=jsonable) + "\n",
                                                     encoding="utf-8")
        (staged / FIT_FILES["json"]).write_text(json.dumps(record, indent=1, default=jsonable) + "\n",
                                                encoding="utf-8")
        (staged / FIT_FILES["md"]).write_text(render_markdown(record), encoding="utf-8")
        plot_frontier(record, staged / FIT_FILES["png"])
    result_ = FitResult(ok=chosen is not None, output=out, chosen=chosen, failed=failed, closest=closest,
                        frontier=record["frontier"], record=record,
                        artifact=out / FIT_FILES["artifact"] if chosen else None,
                        recipe=out / FIT_FILES["recipe"] if chosen else None)
    say(f"[fit] {result_.message}")
    say(f"wrote {out} in {record['elapsed_s']:.0f} s (stages kept in {work})")
    return result_


def _final(fit: _Fit, stages: EncoderStages, result: Any, plan: Plan) -> dict[str, Any]:
    """The chosen plan's numbers after the choice: test split (once), and p50 timed against the teacher in
    alternating rounds of the same run."""
    task = fit.recipe.task
    test = stages.stages["evaluate"].metrics[plan.model_name]["test"]
    test_points = _points(task, test)
    teacher_test = _points(task, stages.stages["teacher"].metrics.get("test")) if task == "text-classification" \
        else 100.0
    if fit.present:
        teacher_p50, plan_p50 = _same_run_timing(fit, result.output, plan)
        timing = "teacher (FP32 PyTorch) and plan (edgellm runtime) timed in 10 alternating rounds"
    else:  # a time taken here would not be the device's
        teacher_p50, plan_p50 = None, plan_p50_predicted(fit, plan)
        timing = f"predicted from {fit.profile.name}'s latency table (the device is not this machine)"
    size = stages.stages["evaluate"].metrics[plan.model_name]["size_bytes"]
    return {"split": "test", "test": test, "test_points": test_points, "teacher_test_points": teacher_test,
            "test_drop": teacher_test - test_points if teacher_test is not None else None,
            "p50_ms": plan_p50, "teacher_p50_ms": teacher_p50,
            "speedup": teacher_p50 / plan_p50 if teacher_p50 else None,
            "size_bytes": size, "teacher_size_bytes": fit.reference.size_bytes,
            "shrink": fit.reference.size_bytes / size, "tokens": fit.tokens, "threads": fit.recipe.evaluate.threads,
            "timing": timing}


def plan_p50_predicted(fit: _Fit, plan: Plan) -> float:
    return float(fit.records[plan]["predicted"]["p50_ms"])


def _final_judged(fit: _Fit, final: dict[str, Any]) -> dict[str, Any]:
    """Every budget on the final numbers: test-split score against the teacher's test score, same-run p50."""
    reference = Reference(points=final["teacher_test_points"], p50_ms=final["teacher_p50_ms"] or math.nan,
                          size_bytes=final["teacher_size_bytes"], metric=fit.reference.metric)
    numbers = {"p50_ms": final["p50_ms"], "size_bytes": final["size_bytes"], "points": final["test_points"]}
    values = _quantities(numbers, reference)
    return {c["flag"]: {"value": values[c["quantity"]], "limit": c["limit"],
                        "met": (_shortfall(c, values[c["quantity"]]) or 0.0) <= 1e-12} for c in fit.constraints}


def _same_run_timing(fit: _Fit, artifact: Path, plan: Plan) -> tuple[float, float]:
    """(teacher p50, plan p50) in ms from 10 alternating rounds, as timed (no reference scaling)."""
    from edgellm.runtime import load

    model = load(artifact, model=plan.model_name, threads=fit.recipe.evaluate.threads, verify=False)
    clock = _TeacherClock(fit.teacher_folder, fit.recipe, fit.data, fit.tokens)
    teacher, timed = clock.time({"plan": _model_call(model, fit.data, fit.tokens)}, repeat=2 * _repeat(fit.recipe),
                                rounds=10)
    return teacher, timed["plan"]


def _write_recipe(path: Path, recipe: Recipe, record: dict[str, Any], chosen: dict[str, Any]) -> None:
    import yaml

    final = chosen.get("final") or {}
    budget = " ".join(f"{k} {v:g}" for k, v in record["budget"].items())
    lines = [
        f"# edgellm fit: the plan chosen for {record['target']} under {budget}",
        f"# plan {chosen['plan']}: validation {chosen['measured']['points']:.2f} (teacher "
        f"{record['reference']['points']:.2f}), p50 {chosen['measured']['p50_ms']:.2f} ms at {record['tokens']} "
        f"tokens, {chosen['measured']['size_bytes'] / 1e6:.2f} MB",
    ]
    if final:
        speed = (f"{final['speedup']:.2f}x the teacher's FP32 PyTorch speed in the same run" if final.get("speedup")
                 else f"p50 {final['p50_ms']:.2f} ms {final['timing']}")
        lines.append(f"# after the choice: test {final['test_points']:.2f} (teacher "
                     f"{final['teacher_test_points']:.2f}), {speed}, {final['shrink']:.1f}x smaller")
    lines.append("# Rebuild: edgellm compress plan.yaml -o OUT (with --work-dir FIT_OUTPUT.work every stage is reused)")
    data = dict(recipe.to_dict())
    data["name"] = f"{recipe.name or 'recipe'}-fit"
    path.write_text("\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")


# --- report ------------------------------------------------------------------------------------------------------

def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(record: dict[str, Any]) -> str:
    """frontier.md: the budget, the teacher, the result, the frontier and the cost model's error."""
    ref = record["reference"]
    plans = {r["plan"]: r for r in record["plans"]}
    budget = ", ".join(f"`{k} {v:g}`" for k, v in record["budget"].items())
    lines = [
        f"# edgellm fit: {record.get('recipe') or record['teacher']} on {record['target']}",
        "",
        f"Budget: {budget} (latency: p50, batch 1, {record['tokens']} tokens, {record['threads']} threads). "
        f"Objective within it: {'the most accurate plan' if record['objective'] == 'accuracy' else 'the fastest plan'}"
        " (choice on the validation split).",
        f"Teacher (FP32 PyTorch, timed in this run): validation {ref['metric']} {ref['points']:.2f}, p50 "
        f"{ref['p50_ms']:.2f} ms, {ref['size_bytes'] / 1e6:.1f} MB.",
        "",
    ]
    if record.get("chosen"):
        c = plans[record["chosen"]]
        f = c.get("final") or {}
        lines += [f"**Chosen: {c['plan']}** ({c['layers']} layers, heads -{c['heads_pruned']:g}, FFN "
                  f"-{c['ffn_pruned']:g}, vocabulary {'trimmed' if c['trim_vocab'] else 'kept'}, {c['engine']}"
                  f"{', [CLS]-only last layer' if c['cls_only'] else ''}): `plan.yaml`, `artifact/`.", ""]
        if f:
            lines += [f"Measured once after the choice (test split; p50: {f['timing']}):", "",
                      "| | test score | p50 ms | size MB |", "|---|---:|---:|---:|",
                      f"| teacher FP32 PyTorch | {_cell(f['teacher_test_points'], '.2f')} | "
                      f"{_cell(f['teacher_p50_ms'], '.2f')} | {f['teacher_size_bytes'] / 1e6:.1f} |",
                      f"| {c['plan']} | {_cell(f['test_points'], '.2f')} | {f['p50_ms']:.2f} | "
                      f"{f['size_bytes'] / 1e6:.2f} |",
                      "",
                      (f"{f['speedup']:.2f}x faster, " if f.get("speedup") else f"p50 {f['timing']}, ")
                      + f"{f['shrink']:.1f}x smaller, "
                      f"{_cell(f['test_drop'], '+.2f')} points on test. Budgets on these numbers: "
                      + ", ".join(f"{k} {'met' if j['met'] else 'NOT met'}" for k, j in f["judged"].items()) + ".",
                      ""]
    else:
        lines += ["**No plan meets the budget.** " + "; ".join(
            f"{x['flag']} {x['limit']:g}: the best {'measured' if x['measured'] else 'predicted'} value is "
            f"{_cell(x['best'], '.3g')} ({x['plan']}, among {x['among']})" for x in record["failed"]) + ".", "",
            "Closest plans:", "", "| plan | validation | p50 ms | size MB | numbers | misses |",
            "|---|---:|---:|---:|---|---|"]
        for x in record["closest"]:
            misses = ", ".join(f"{k} ({_cell(v, '.3g')})" for k, v in x["misses"].items()) or "-"
            if x["unknown"]:
                misses += f"; unknown: {', '.join(x['unknown'])}"
            lines.append(f"| {x['plan']} | {_cell(x['points'], '.2f')} | {x['p50_ms']:.2f} | {x['size_mb']:.2f} | "
                         f"{'measured' if x['measured'] else 'predicted'} | {misses} |")
        lines.append("")
    cm = record["cost_model"]
    err = cm.get("median_error_pct")
    relative = ("; every timing of the search quoted at the teacher's first p50, from alternating rounds with the "
                "teacher") if record["target_present"] else ""
    lines += [f"Cost model ({cm['source']}{relative}): " + ", ".join(
        f"{e} fitted on {m['rows']} shapes (median error {m['fit_error_pct']:.1f}%)" for e, m in cm["engines"].items())
        + (f"; predicted vs measured p50 of the {cm['measured_plans']} plans built: median error {err:.1f}%."
           if err is not None else "; no plan was built and timed here."), ""]
    lines += ["Pareto frontier (validation score vs p50 vs size; m = measured, p = predicted):", "",
              "| plan | validation | p50 ms | size MB | status |", "|---|---:|---:|---:|---|"]
    for name in record["frontier"]:
        r = plans[name]
        n = _numbers(r)
        tag_l = "m" if r.get("measured") and record["target_present"] else "p"  # latency: timed here or not
        tag_s = "m" if r.get("measured") else "p"
        tag_a = "" if r.get("measured") else " (est.)"
        lines.append(f"| {name} | {_cell(n['points'], '.2f')}{tag_a} | {n['p50_ms']:.2f} {tag_l} | "
                     f"{n['size_bytes'] / 1e6:.2f} {tag_s} | {r['status']} |")
    search = record["search"]
    trained = [a for a in search["arms"] if a.get("rungs")]
    lines += ["", f"Search: {len(record['plans'])} plans, {len(search['arms'])} trained arm(s) predicted within the "
              f"budget, successive halving (eta {search['eta']}, {search['rungs']} rung(s)): "
              + (", ".join(f"{a['arm']} {' -> '.join(format(x['points'], '.2f') for x in a['rungs'])}" for a in trained)
                 or "nothing trained") + f". {record.get('elapsed_s', 0):.0f} s in all.", ""]
    return "\n".join(lines)


def plot_frontier(record: dict[str, Any], path: Path) -> Path:
    """frontier.png: validation score against p50 and against size; measured numbers filled, predicted hollow (a
    measured plan's prediction joined to it by a thin line); budgets dashed; the chosen plan a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plans = [r for r in record["plans"] if _numbers(r)["points"] is not None]
    front = set(record["frontier"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=120)
    for ax, quantity, label in ((axes[0], "p50_ms", f"p50 ms ({record['tokens']} tokens, batch 1)"),
                                (axes[1], "size_bytes", "size on disk, MB")):
        scale = 1e6 if quantity == "size_bytes" else 1.0
        for r in plans:
            n = _numbers(r)
            x, y = n[quantity] / scale, n["points"]
            color = "tab:red" if r["plan"] in front else "tab:blue"
            if r.get("measured"):
                px = r["predicted"][quantity] / scale
                ax.plot([px, x], [y, y], color="gray", linewidth=0.6, zorder=1)
                ax.scatter([px], [y], s=18, facecolors="none", edgecolors="gray", linewidths=0.8, zorder=2)
                ax.scatter([x], [y], s=36, color=color, zorder=3)
            else:
                ax.scatter([x], [y], s=30, facecolors="none", edgecolors=color, linewidths=1.0, zorder=2)
            if r["plan"] == record.get("chosen"):
                ax.scatter([x], [y], s=260, marker="*", color="gold", edgecolors="black", zorder=4)
        for c in record["budget"]:
            value = record["budget"][c]
            if c == "--max-ms" and quantity == "p50_ms":
                ax.axvline(value, color="black", linestyle="--", linewidth=0.8)
            if c == "--min-speedup" and quantity == "p50_ms":
                ax.axvline(record["reference"]["p50_ms"] / value, color="black", linestyle="--", linewidth=0.8)
            if c == "--max-mb" and quantity == "size_bytes":
                ax.axvline(value, color="black", linestyle="--", linewidth=0.8)
            if c == "--min-shrink" and quantity == "size_bytes":
                ax.axvline(record["reference"]["size_bytes"] / value / 1e6, color="black", linestyle="--",
                           linewidth=0.8)
        if record.get("floor") is not None:
            ax.axhline(record["floor"], color="black", linestyle=":", linewidth=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"validation {record['reference']['metric']}")
        ax.grid(True, alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color="tab:blue", label="measured"),
               Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="tab:blue",
                      label="predicted (cost model; accuracy from training)"),
               Line2D([], [], marker="o", linestyle="", color="tab:red", label="Pareto frontier"),
               Line2D([], [], marker="*", linestyle="", color="gold", markeredgecolor="black", markersize=12,
                      label="chosen"),
               Line2D([], [], linestyle="--", color="black", label="budget")]
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"edgellm fit: {record.get('recipe') or record['teacher']} on {record['target']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
