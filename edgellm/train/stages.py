"""The trainer's verbs: finetune a teacher, build a student from it, distil, evaluate; and all of it in one call.

    data = load_task_data(DataConfig(name="movie-reviews"))
    teacher = finetune("embedded:all-MiniLM-L6-v2", data, FinetuneConfig(epochs=2), "work/teacher")
    student = distill(teacher, data, DistillConfig(num_layers=3), "work/student")
    evaluate_model(student, data, split="test", teacher=teacher)   # {"accuracy": ..., "agreement_with_teacher": ...}
    student.save("models/sentiment-l3")                             # Hugging Face folder, safetensors only

Every verb takes the recipe's dataclasses and a work folder; rerunning a killed call resumes from its last
checkpoint there (see edgellm.train.loop). feature-extraction (sentence embeddings) uses the same verbs: no
fine-tuning, the student learns the teacher's pooled vectors, and is judged by how its similarities of held-out
sentence pairs rank like the teacher's (Spearman).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgellm.config import to_dict
from edgellm.data import Examples, TaskData, load_task_data, load_texts
from edgellm.errors import ConfigError, DataError, ModelError, TrainingError
from edgellm.evaluate import AGREEMENT_PAIRS, classification_metrics, embedding_agreement, sentence_pairs
from edgellm.recipe import DataConfig, DistillConfig, FinetuneConfig
from edgellm.train.data import IGNORE_LABEL, TokenBatches, encode_texts, eval_batches
from edgellm.train.losses import attention_kl, embedding_loss, hidden_mse, kd_loss, layer_map, mean_pool
from edgellm.train.loop import LoopOptions, autocast_dtype, device_for, train_loop
from edgellm.train.model import TrainedModel, check_labels, check_output_folder, head_labels, load_model
from edgellm.train.student import STUDENT_KEY, build_student

__all__ = ["finetune", "distill", "evaluate_model", "train_student", "sentence_pairs", "model_size", "augment_texts"]

log = logging.getLogger(__name__)

EVAL_BATCH = 128  # encoder rows per evaluation forward (short texts, small outputs)


# --- verbs ------------------------------------------------------------------------------------------------------

def finetune(teacher: Any, data: TaskData, config: FinetuneConfig, work_dir: str | os.PathLike[str], *,
             progress: bool = True) -> TrainedModel:
    """A teacher classifier for `data`'s labels.

    A teacher whose classification head already covers the labels is returned as it is (its classes named as the
    data names them); a teacher without a head gets a new one, fine-tuned with the whole encoder (AdamW, warm-up
    and linear decay, best validation accuracy kept). Other tasks need no fine-tuning: the teacher is loaded.
    """
    if data.task != "text-classification":
        return load_model(teacher, task=data.task)
    if isinstance(teacher, TrainedModel):
        if teacher.task != "text-classification":
            raise ConfigError(f"finetune: the teacher is a {teacher.task} model; give a classifier or a model folder")
        tm = teacher
        has_head = True
    else:
        has_head = _has_head(teacher)
        tm = load_model(teacher, task="text-classification", labels=data.labels, seed=config.seed)
    if has_head and config.extend_vocab is not None:
        raise ConfigError(f"finetune.extend_vocab: teacher = {tm.source!r} already has a classification head for the "
                          "labels and is used as it is, so new embedding rows would never be learnt; remove "
                          "extend_vocab or start from the teacher's encoder without a head")
    if has_head:
        tm.labels = check_labels(tm, data.labels)
        tm.metrics = {"finetuned": False, "reason": "the teacher's classification head already covers the labels",
                      "validation": _maybe_eval(tm, data, "validation")}
        log.info("teacher %s has a head for %s: used as it is", tm.source, tm.labels)
        return tm
    if not config.enabled:
        raise TrainingError(f"teacher = {tm.source!r} has no classification head, and finetune.enabled is false: "
                            "enable the finetune stage or give a teacher that is already a classifier")
    work = Path(work_dir)
    options = LoopOptions.from_config(config)
    started = time.perf_counter()
    extension = _extend_vocab(tm, data, config)
    ids = _encode(tm, data.train.texts, data)
    plan = TokenBatches(ids, config.batch_size, config.seed, labels=list(data.train.labels or []), pad_id=_pad(tm))
    eval_fn = _classifier_eval(tm, data, options) if len(data.validation) else None

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"])

    result = train_loop(tm.model, loss_fn, plan, options=options, work_dir=work / "train", eval_fn=eval_fn,
                        metric="accuracy", fingerprint=_fingerprint(data, tm, extra={"teacher": tm.source}),
                        progress=progress, desc="teacher")
    tm.model.eval()
    tm.metrics = {"finetuned": True, "train": _train_record(result, time.perf_counter() - started),
                  "validation": _maybe_eval(tm, data, "validation"),
                  **({"vocab_extension": extension} if extension is not None else {})}
    tm.save(work / "model", overwrite=True)
    return tm


def distill(teacher: Any, data: TaskData, config: DistillConfig, work_dir: str | os.PathLike[str], *,
            student: Any = None, progress: bool = True) -> TrainedModel:
    """Train a student on the teacher's outputs (and the hard labels), keeping the best validation checkpoint.

    teacher: a TrainedModel (e.g. from `finetune`) or a model folder / alias. student: None (built from the
    teacher with `build_student(teacher, config)`), or any model of the same task and vocabulary, e.g. a pruned
    copy of the teacher (recovery training). Losses: KL at `temperature` x T^2 (`alpha_kd`), CE on labels
    (`alpha_ce`), hidden-state MSE (`alpha_hidden`), attention-map KL (`alpha_attention`); for
    feature-extraction the pooled-vector loss (`embedding_loss`) replaces KL and CE. Text from
    `augment_with` (minus every sentence of the data set itself) adds rows that only carry the teacher's outputs.
    """
    task = data.task
    tm = load_model(teacher, task=task) if not isinstance(teacher, TrainedModel) else teacher
    if tm.task != task:
        raise ConfigError(f"the teacher is a {tm.task} model but the data is for {task}")
    if task == "text-classification":
        names = check_labels(tm, data.labels)
        tm.labels = names
        if names != data.labels:
            data = data.relabel(names)
    st = _as_student(student, tm, config)
    work = Path(work_dir)
    options = LoopOptions.from_config(config)
    device = device_for(options)
    dtype = autocast_dtype(options.precision, device)
    started = time.perf_counter()
    augment = augment_texts(config.augment_with, data)
    ids = _encode(tm, data.train.texts + augment, data)
    labels = None
    if task == "text-classification":
        labels = list(data.train.labels or []) + [IGNORE_LABEL] * len(augment)
    plan = TokenBatches(ids, config.batch_size, config.seed, labels=labels, pad_id=_pad(tm))
    tm.model.to(device).eval()  # its forward passes run under no_grad; its parameters are not optimised
    pairing = _pairing(st.model, tm.model, config)
    cache = _TeacherCache(tm, ids, _pad(tm), device, dtype) if pairing is None else None
    if task == "text-classification":
        loss_fn = _classifier_loss(tm, config, cache, pairing)
        eval_fn = _classifier_eval(st, data, options) if len(data.validation) else None
        metric = "accuracy"
    else:
        loss_fn = _embedding_loss(tm, config, cache, pairing)
        eval_fn = _embedding_eval(st, tm, data.validation, data, options) if len(data.validation) > 2 else None
        metric = "spearman"
    result = train_loop(
        st.model, loss_fn, plan, options=options, work_dir=work / "train", eval_fn=eval_fn, metric=metric,
        fingerprint=_fingerprint(data, tm, extra={"student": _shape_record(st.model), "augment": _digest(augment),
                                                  "config": to_dict(config)}),
        progress=progress, desc="student")
    st.model.eval()
    st.metrics = {"train": _train_record(result, time.perf_counter() - started),
                  "augment_rows": len(augment), "student": model_size(st.model),
                  "teacher_layers": getattr(st.model.config, STUDENT_KEY, {}).get("teacher_layers"),
                  "validation": _maybe_eval(st, data, "validation", teacher=tm)}
    return st


def evaluate_model(model: Any, data: TaskData, *, split: str = "test", teacher: Any = None,
                   precision: str = "fp32", batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """Metrics of a model on one split.

    text-classification: accuracy and macro-F1 (percent), and agreement with `teacher`'s predictions when given.
    feature-extraction: Spearman of the model's vs the teacher's cosine similarities on seeded sentence pairs of
    the split (`teacher` required), and the mean cosine between their vectors.
    """
    tm = load_model(model, task=data.task, field_name="model")
    part = _split(data, split)
    if not len(part):
        raise DataError(f"the {split} split is empty; nothing to evaluate")
    device = next(tm.model.parameters()).device
    dtype = autocast_dtype(precision, device)
    ids = _encode(tm, part.texts, data)
    if data.task == "text-classification":
        names = check_labels(tm, data.labels)
        aligned = data.relabel(names) if names != data.labels else data
        gold = _split(aligned, split).labels or []
        logits = _logits(tm.model, ids, _pad(tm), device, dtype, batch_size)
        pred = logits.argmax(-1).tolist()
        out = classification_metrics(pred, gold, len(names))
        if teacher is not None:
            t = load_model(teacher, task=data.task, field_name="teacher")
            t.model.to(device)
            t_pred = _logits(t.model, _encode(t, part.texts, data), _pad(t), device, dtype, batch_size).argmax(-1)
            out["agreement_with_teacher"] = float((t_pred == logits.argmax(-1)).double().mean() * 100.0)
        return out
    if teacher is None:
        raise ConfigError("evaluating an embedding model needs the teacher (reference vectors) to compare with")
    t = load_model(teacher, task=data.task, field_name="teacher")
    t.model.to(device)
    pairs = sentence_pairs(len(part), AGREEMENT_PAIRS, data.split.seed)
    mine = _embeddings(tm.model, ids, _pad(tm), device, dtype, _pooling(tm), batch_size).numpy()
    ref = _embeddings(t.model, _encode(t, part.texts, data), _pad(t), device, dtype, _pooling(t), batch_size).numpy()
    return embedding_agreement(ref, mine, pairs)


def train_student(teacher: Any, output: str | os.PathLike[str], *, task: str = "text-classification",
                  data: DataConfig, finetune_config: FinetuneConfig | None = None,
                  distill_config: DistillConfig | None = None, work_dir: str | os.PathLike[str] | None = None,
                  overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Data -> teacher (fine-tuned if it needs a head) -> student -> Hugging Face folder at `output`.

    Returns the metrics also written to `output/training_metrics.json`: data record (split sizes, seed, hashes),
    teacher and student validation and test metrics, sizes and wall times. Work (checkpoints, the fine-tuned
    teacher) goes to `work_dir` (default: `<output>.work`); rerunning the same call resumes there.
    """
    out = check_output_folder(output, overwrite=overwrite)  # now, not after the training
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
    distill_config = distill_config or DistillConfig()
    started = time.perf_counter()
    td = load_task_data(data, task=task)
    teacher_model = finetune(teacher, td, finetune_config or FinetuneConfig(enabled=False), work / "teacher",
                             progress=progress)
    student = distill(teacher_model, td, distill_config, work / "student", progress=progress)
    if task == "text-classification":
        td = td.relabel(teacher_model.labels) if teacher_model.labels != td.labels else td
    metrics = {
        "data": td.describe(),
        "teacher": {**teacher_model.metrics, "test": evaluate_model(teacher_model, td, split="test")
                    if task == "text-classification" else None, "size": model_size(teacher_model.model)},
        "student": {**student.metrics, "test": evaluate_model(student, td, split="test", teacher=teacher_model)},
        "config": {"finetune": to_dict(finetune_config), "distill": to_dict(distill_config), "data": to_dict(data)},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    student.save(out, overwrite=overwrite, metrics=metrics)
    return metrics


def _extend_vocab(tm: TrainedModel, data: TaskData, config: FinetuneConfig) -> dict[str, Any] | None:
    """finetune.extend_vocab: the training text's missing characters join the vocabulary (edgellm.vocab), in place
    in `tm`, before its training; the report (the test split's unknown rate included) or None when it is off."""
    if config.extend_vocab is None:
        return None
    from edgellm.vocab import extend_vocabulary

    result = extend_vocabulary(tm.model, tm.tokenizer, data.train.texts, config=config.extend_vocab,
                               held_out=data.test.texts or None)
    tm.tokenizer = result.tokenizer
    report = dict(result.report)
    if "held_out" in report:
        report["test"] = report.pop("held_out")
    return report


# --- helpers: data ------------------------------------------------------------------------------------------------

def _split(data: TaskData, split: str) -> Examples:
    parts = data.splits()
    if split not in parts:
        raise ConfigError(f"split = {split!r} is not one of {list(parts)}")
    return parts[split]


def _max_length(tm: TrainedModel, data: TaskData) -> int:
    from edgellm.models import default_max_length

    limit = default_max_length(tm.model, tm.tokenizer)
    return min(int(data.max_length), limit) if data.max_length else limit


def _encode(tm: TrainedModel, texts: Sequence[str], data: TaskData) -> list[list[int]]:
    return encode_texts(tm.tokenizer, texts, _max_length(tm, data))


def _pad(tm: TrainedModel) -> int:
    pad = tm.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def _pooling(tm: TrainedModel) -> str:
    return (tm.embedding or {}).get("pooling", "mean")


def augment_texts(sources: Sequence[str], data: TaskData, *, exclude: Sequence[str] = ()) -> list[str]:
    """Extra text for distillation (`distill.augment_with`), without any sentence of the task's own splits (no test
    leakage) or of `exclude` (e.g. out-of-domain evaluation text), each sentence once."""
    if not sources:
        return []
    taken = {t.strip() for e in data.splits().values() for t in e.texts} | {t.strip() for t in exclude}
    out: list[str] = []
    for source in sources:
        for text in load_texts(source):
            key = text.strip()
            if key and key not in taken:
                taken.add(key)
                out.append(text)
    log.info("augmenting with %d sentences from %s", len(out), list(sources))
    return out


def _digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", errors="surrogatepass") + b"\n")
    return h.hexdigest()[:16]


def _fingerprint(data: TaskData, tm: TrainedModel, extra: dict[str, Any]) -> dict[str, Any]:
    with torch.no_grad():
        checksum = float(sum(p.detach().double().sum() for p in tm.model.parameters()))
    return {"data": {k: e.sha256() for k, e in data.splits().items()}, "labels": data.labels,
            "max_length": _max_length(tm, data), "teacher_checksum": round(checksum, 6), **extra}


def _shape_record(model: torch.nn.Module) -> str:
    return hashlib.sha256(repr([(n, tuple(p.shape)) for n, p in model.state_dict().items()]).encode()).hexdigest()[:16]


# --- helpers: models ---------------------------------------------------------------------------------------------

def _has_head(teacher: Any) -> bool:
    from transformers import AutoConfig

    from edgellm.models import resolve_model

    try:
        path = resolve_model(teacher)
        return head_labels(AutoConfig.from_pretrained(path)) is not None
    except ModelError as exc:
        raise ModelError(f"teacher = {str(teacher)!r} is not a usable model: {exc}") from exc
    except Exception as exc:
        raise ModelError(f"teacher = {str(teacher)!r} is not a Hugging Face model: {exc}") from exc


def _as_student(student: Any, tm: TrainedModel, config: DistillConfig) -> TrainedModel:
    if student is None:
        model = build_student(tm.model, config)
    elif isinstance(student, TrainedModel):
        model = student.model
    elif isinstance(student, torch.nn.Module):
        model = student
    else:
        model = load_model(student, task=tm.task, field_name="student").model
    if tm.task == "text-classification":
        k = int(getattr(model.config, "num_labels", 0))
        if k != len(tm.labels or []):
            raise ModelError(f"the student has {k} classes but the teacher has {len(tm.labels or [])}")
        model.config.id2label = dict(enumerate(tm.labels or []))
        model.config.label2id = {n: i for i, n in enumerate(tm.labels or [])}
    return TrainedModel(model=model, tokenizer=tm.tokenizer, task=tm.task, labels=tm.labels,
                        embedding=tm.embedding, source=f"distilled from {tm.source}")


def model_size(model: torch.nn.Module) -> dict[str, Any]:
    """Parameters, layers, hidden width and the FP32 weight bytes."""
    from edgellm.models import count_parameters

    params = count_parameters(model)
    cfg = model.config
    return {"parameters": params, "fp32_mb": round(params * 4 / 1e6, 2),
            "layers": int(getattr(cfg, "num_hidden_layers", 0) or 0),
            "hidden_size": int(getattr(cfg, "hidden_size", 0) or 0),
            "intermediate_size": int(getattr(cfg, "intermediate_size", 0) or 0)}


def _forward_batches(model: torch.nn.Module, ids: list[list[int]], pad: int, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int, fn: Callable[[Any, dict], torch.Tensor]
                     ) -> torch.Tensor:
    """fn(model, batch) for every row, in row order, in eval mode without gradients."""
    import contextlib

    was = model.training
    model.eval()
    out: torch.Tensor | None = None
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), ctx:
            for batch in eval_batches(ids, batch_size=batch_size, pad_id=pad):
                value = fn(model, {k: v.to(device) for k, v in batch.items()}).float().cpu()
                if out is None:
                    out = torch.zeros((len(ids), *value.shape[1:]), dtype=torch.float32)
                out[batch["index"]] = value
    finally:
        model.train(was)
    if out is None:
        raise DataError("no rows to run the model on")
    return out


def _logits(model: torch.nn.Module, ids: list[list[int]], pad: int, device: torch.device,
            dtype: torch.dtype | None, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    return _forward_batches(model, ids, pad, device, dtype, batch_size,
                            lambda m, b: m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    return hidden[:, 0] if pooling == "cls" else mean_pool(hidden, mask)


def _embeddings(model: torch.nn.Module, ids: list[list[int]], pad: int, device: torch.device,
                dtype: torch.dtype | None, pooling: str, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Pooled (not normalised) sentence vectors, (N, H)."""
    return _forward_batches(model, ids, pad, device, dtype, batch_size, lambda m, b: _pool(
        m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state, b["attention_mask"],
        pooling))


class _TeacherCache:
    """Teacher outputs (logits or pooled vectors) for every training row, computed once on first use."""

    def __init__(self, tm: TrainedModel, ids: list[list[int]], pad: int, device: torch.device,
                 dtype: torch.dtype | None) -> None:
        self.tm, self.ids, self.pad, self.device, self.dtype = tm, ids, pad, device, dtype
        self.values: torch.Tensor | None = None

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if self.values is None:
            started = time.perf_counter()
            if self.tm.task == "text-classification":
                self.values = _logits(self.tm.model, self.ids, self.pad, self.device, self.dtype)
            else:
                self.values = _embeddings(self.tm.model, self.ids, self.pad, self.device, self.dtype,
                                          _pooling(self.tm))
            self.values = self.values.to(self.device)
            log.info("teacher outputs for %d rows in %.1f s", len(self.ids), time.perf_counter() - started)
        return self.values[index]


class _Pairing:
    """Which teacher layer each student layer learns from, for the hidden-state and attention losses."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, config: DistillConfig) -> None:
        s_cfg, t_cfg = student.config, teacher.config
        record = getattr(s_cfg, STUDENT_KEY, None) or {}
        # The recorded layers hold only against the teacher the student was built from (not, say, against the
        # unpruned student when a pruned copy of it is recovered): check the depth matches.
        chosen = record.get("teacher_layers") if record.get("teacher_num_layers") == t_cfg.num_hidden_layers else None
        self.map = layer_map(int(s_cfg.num_hidden_layers), int(t_cfg.num_hidden_layers), chosen)
        self.hidden = config.alpha_hidden > 0
        self.attention = config.alpha_attention > 0
        if self.hidden and s_cfg.hidden_size != t_cfg.hidden_size:
            raise ConfigError(f"distill.alpha_hidden = {config.alpha_hidden} needs equal hidden sizes, but the "
                              f"student has {s_cfg.hidden_size} and the teacher {t_cfg.hidden_size}")
        if self.attention:
            for name, model in (("student", student), ("teacher", teacher)):
                if getattr(model.config, "_attn_implementation", "eager") != "eager":
                    model.set_attn_implementation("eager")  # only eager attention returns the maps

    def losses(self, s_out: Any, t_out: Any, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.hidden:
            s_states = list(s_out.hidden_states)
            t_states = [t_out.hidden_states[0]] + [t_out.hidden_states[i + 1] for i in self.map]
            out["hidden"] = hidden_mse(s_states, t_states, mask)
        if self.attention:
            if s_out.attentions is None or t_out.attentions is None:
                raise TrainingError("the model returned no attention maps; alpha_attention needs eager attention")
            s_maps = list(s_out.attentions)
            t_maps = [t_out.attentions[i] for i in self.map]
            for i, (s, t) in enumerate(zip(s_maps, t_maps)):
                if s.shape != t.shape:
                    raise ConfigError(f"distill.alpha_attention: student layer {i} has {s.shape[1]} heads, teacher "
                                      f"layer {self.map[i]} has {t.shape[1]}; the attention loss needs equal heads")
            out["attention"] = attention_kl(s_maps, t_maps, mask)
        return out


def _pairing(student: torch.nn.Module, teacher: torch.nn.Module, config: DistillConfig) -> _Pairing | None:
    if config.alpha_hidden <= 0 and config.alpha_attention <= 0:
        return None
    return _Pairing(student, teacher, config)


def _run(model: torch.nn.Module, batch: dict[str, torch.Tensor], pairing: _Pairing | None) -> Any:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 output_hidden_states=bool(pairing and pairing.hidden),
                 output_attentions=bool(pairing and pairing.attention))


def _teacher_target(tm: TrainedModel, batch: dict[str, torch.Tensor], pairing: _Pairing | None,
                    cache: _TeacherCache | None, pick: Callable[[Any], torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """(the teacher's target for this batch, its full output or None): from the cache of precomputed targets when
    there is one (no layer-wise losses then), else a no-grad teacher forward and `pick` of its output."""
    if cache is not None:
        return cache(batch["index"]), None
    with torch.no_grad():
        out = _run(tm.model, batch, pairing)
    return pick(out), out


def _classifier_loss(tm: TrainedModel, config: DistillConfig, cache: _TeacherCache | None,
                     pairing: _Pairing | None) -> Callable:
    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        s_out = _run(model, batch, pairing)
        t_logits, t_out = _teacher_target(tm, batch, pairing, cache, lambda out: out.logits)
        parts: dict[str, torch.Tensor] = {}
        if config.alpha_kd > 0:
            parts["kd"] = kd_loss(s_out.logits, t_logits, config.temperature) * config.alpha_kd
        labels = batch["labels"]
        if config.alpha_ce > 0 and bool((labels != IGNORE_LABEL).any()):
            parts["ce"] = F.cross_entropy(s_out.logits.float(), labels, ignore_index=IGNORE_LABEL) * config.alpha_ce
        if pairing is not None:
            extra = pairing.losses(s_out, t_out, batch["attention_mask"])
            if "hidden" in extra:
                parts["hidden"] = extra["hidden"] * config.alpha_hidden
            if "attention" in extra:
                parts["attention"] = extra["attention"] * config.alpha_attention
        if not parts:
            raise ConfigError("distill: every loss weight is 0 (alpha_kd, alpha_ce, alpha_hidden, alpha_attention)")
        total = torch.stack(list(parts.values())).sum()
        return total, {k: float(v.detach()) for k, v in parts.items()}

    return loss_fn


def _embedding_loss(tm: TrainedModel, config: DistillConfig, cache: _TeacherCache | None,
                    pairing: _Pairing | None) -> Callable:
    pooling = _pooling(tm)

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        mask = batch["attention_mask"]
        s_out = _run(model, batch, pairing)
        t_vec, t_out = _teacher_target(tm, batch, pairing, cache,
                                       lambda out: _pool(out.last_hidden_state, mask, pooling))
        parts = {"embedding": embedding_loss(_pool(s_out.last_hidden_state, mask, pooling), t_vec,
                                             config.embedding_loss)}
        if pairing is not None:
            extra = pairing.losses(s_out, t_out, mask)
            if "hidden" in extra:
                parts["hidden"] = extra["hidden"] * config.alpha_hidden
            if "attention" in extra:
                parts["attention"] = extra["attention"] * config.alpha_attention
        total = torch.stack(list(parts.values())).sum()
        return total, {k: float(v.detach()) for k, v in parts.items()}

    return loss_fn


def _classifier_eval(tm: TrainedModel, data: TaskData, options: LoopOptions) -> Callable:
    ids = _encode(tm, data.validation.texts, data)
    gold = list(data.validation.labels or [])
    pad = _pad(tm)
    k = len(data.labels or [])

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        logits = _logits(model, ids, pad, device, None)  # runs under the loop's autocast
        m = classification_metrics(logits.argmax(-1).tolist(), gold, k)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    return eval_fn


def _embedding_eval(st: TrainedModel, tm: TrainedModel, part: Examples, data: TaskData,
                    options: LoopOptions) -> Callable:
    ids = _encode(st, part.texts, data)
    pairs = sentence_pairs(len(part), AGREEMENT_PAIRS, data.split.seed)
    pooling = _pooling(tm)
    reference: dict[str, np.ndarray] = {}

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        if "ref" not in reference:
            reference["ref"] = _embeddings(tm.model, ids, _pad(tm), device, None, pooling).numpy()
        mine = _embeddings(model, ids, _pad(st), device, None, pooling).numpy()
        agree = embedding_agreement(reference["ref"], mine, pairs)
        return {k: v for k, v in agree.items() if k != "pairs"}

    return eval_fn


def _maybe_eval(tm: TrainedModel, data: TaskData, split: str, teacher: TrainedModel | None = None
                ) -> dict[str, Any] | None:
    if len(_split(data, split)) < (3 if data.task == "feature-extraction" else 1):
        return None
    if data.task == "feature-extraction" and teacher is None:
        return None
    return evaluate_model(tm, data, split=split, teacher=teacher)


def _train_record(result: Any, wall: float) -> dict[str, Any]:
    return {"steps": result.steps, "best": result.best, "train_wall_s": result.wall_s,
            "stage_wall_s": round(wall, 1), "precision": result.precision, "world_size": result.world_size,
            "resumed_from": result.resumed_from, "history": result.history}
