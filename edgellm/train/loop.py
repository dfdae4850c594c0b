"""A generic, resumable training loop: any model, any batch -> loss function, any evaluation.

Fine-tuning, distillation (classification and embeddings), pruning recovery and token-level KD for causal LMs all
run through `train_loop`; only the batches and the loss differ.

    from edgellm.train.loop import LoopOptions, train_loop

    result = train_loop(
        model,                                 # torch.nn.Module; its parameters with requires_grad are trained
        loss_fn,                               # (model, batch) -> loss, or (loss, {"name": float, ...}) to log parts
        batches,                               # BatchPlan: len(plan) batches per epoch, plan.epoch(e) -> list
        options=LoopOptions.from_config(cfg),  # schedule from FinetuneConfig / DistillConfig, or LoopOptions(...)
        work_dir="work/student",               # checkpoints; rerunning the same call resumes from the last one
        eval_fn=lambda m: {"accuracy": 91.0},  # eval mode, no_grad, every options.eval_every steps and at the end
        metric="accuracy", higher_is_better=True,
    )
    result.model      # the same module, holding the best weights (by `metric`), or the last when no eval_fn
    result.best       # {"step": ..., "accuracy": ...}; result.history: every evaluation; result.steps

Contract
- `batches.epoch(e)` must return the same batches for the same `e` on every call and in every process (build
  them from a seeded generator; `edgellm.train.data.TokenBatches` does). A batch is a dict (or list / tuple) of
  tensors whose first dimension is the rows; the loop moves it to the device.
- `loss_fn` gets the model itself (never a wrapper) and the batch, and returns a scalar tensor (the mean over the
  batch's rows). Anything it needs besides the batch (a teacher, cached teacher outputs) it closes over; put
  such modules on `device_for(options)` yourself.
- Optimizer: AdamW (no decay on biases / norm weights), linear warm-up then linear decay to 0, gradient
  clipping to `max_grad_norm`, optional bf16 autocast (`precision`).
- Determinism: the data order is a function of (seed, epoch) and the random state (torch, numpy, random: dropout,
  sampling) is re-seeded from (seed, step, rank) before every step, so a run is reproducible on CPU and a resumed
  run follows exactly the path of an uninterrupted one; no random state needs saving.
- Checkpoints: every `eval_every` steps, as `work_dir/checkpoints/step-N/` = model.safetensors +
  optimizer.safetensors + trainer.json (step, best, history, fingerprint, optimizer hyper-parameters); written
  into a temporary folder and renamed into place, so a kill -9 at any instant leaves the previous checkpoint
  intact. No pickle. The best weights are kept in `work_dir/best/`. A finished run leaves `work_dir/result.json`
  and the best weights; calling it again loads them and returns at once. A checkpoint of a different run
  (other options, model shapes or data: see `fingerprint`) is refused with TrainingError; pass `resume=False`
  to start over.
- Time budget: with `time_budget_s`, the schedule (warm-up, then linear decay to 0) first spans
  time_budget_s / seconds_per_step steps (at most `epochs`); after REPLAN_AFTER steps and at every evaluation the
  loop measures its own step time (the first WARM_STEPS steps left out: allocator and kernel caches warm up) and
  sets the total to the steps that still fit, so a run whose steps are faster or slower than estimated still
  trains for its budget and still ends its decay at 0. The total is part of the checkpoint; a resumed run goes on
  from it and keeps measuring. Such a run's length depends on the machine's speed; without a time budget it does
  not.
- Pausing: inside `edgellm._pause.pause_training(f)` a run stops after ceil(f x total) steps (the schedule still
  spans the whole run), evaluates, checkpoints and raises TrainingPaused; called again it resumes there. The pause
  evaluation is not part of the history or the best checkpoint, so a paused and resumed run ends exactly as an
  uninterrupted one (edgellm fit's successive halving trains its rungs this way).
- Data parallel: started under `torchrun --nproc_per_node N` or `accelerate launch --num_processes N` (env
  WORLD_SIZE > 1), the loop joins the process group (nccl on GPUs, gloo on CPUs), gives process r the rows
  r::N of every batch, averages gradients with all-reduce before clipping, and lets rank 0 alone write
  checkpoints. Nothing else changes: same batches, same loss, same checkpoints. Every process runs `eval_fn`
  on the whole evaluation set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from edgellm._faults import fault_point
from edgellm._pause import TrainingPaused, pause_fraction
from edgellm.console import live_progress
from edgellm.errors import ConfigError, TrainingError

__all__ = [
    "BatchPlan",
    "FixedBatches",
    "LoopOptions",
    "LoopResult",
    "train_loop",
    "device_for",
    "autocast_dtype",
    "lr_factor",
    "distributed_context",
    "keep_freed_memory",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edgellm-train-checkpoint"
CHECKPOINT_VERSION = 1
_TMP_PREFIX = ".tmp-"
REPLAN_AFTER = 20  # time budget: steps before the first re-plan
WARM_STEPS = 3  # time budget: first steps of a process left out of the measured step time


class BatchPlan(Protocol):
    """Batches per epoch, deterministic given the epoch."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Sequence[Any]: ...


@dataclass
class FixedBatches:
    """The same list of batches every epoch (tests, or data that is shuffled elsewhere)."""

    batches: list[Any]

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int) -> Sequence[Any]:
        return self.batches


@dataclass
class LoopOptions:
    """Schedule and run options of `train_loop`."""

    epochs: float = 1.0  # passes over the batch plan (fractions allowed)
    learning_rate: float = 5e-5  # AdamW peak learning rate
    warmup_ratio: float = 0.06  # share of steps with linear warm-up; then linear decay to 0
    weight_decay: float = 0.01  # AdamW decay, not applied to biases and norm weights (1-d parameters)
    max_grad_norm: float = 1.0  # global L2 norm clipping
    eval_every: int = 200  # steps between evaluations and checkpoints
    seed: int = 42  # data order and per-step random state
    precision: str = "auto"  # fp32, bf16 (autocast), auto = bf16 where the hardware does it natively
    max_steps: int | None = None  # stop after this many steps (the schedule still spans `epochs`)
    device: str = "auto"  # auto (cuda:LOCAL_RANK when there is a GPU, else cpu), cpu, cuda
    time_budget_s: float | None = None  # seconds the steps may take (evaluations not counted): the schedule's
    # length follows the measured step time, within `epochs` (see "Time budget" in the module docstring)
    seconds_per_step: float | None = None  # the expected step time, for the schedule until the first re-plan

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> LoopOptions:
        """Options from any config with the schedule fields (FinetuneConfig, DistillConfig, ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {n: getattr(config, n) for n in names if hasattr(config, n)}
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        from edgellm.config import check_range

        check_range("epochs", self.epochs, low=0.0, low_open=True)
        check_range("learning_rate", self.learning_rate, low=0.0, low_open=True)
        check_range("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0)
        check_range("eval_every", self.eval_every, low=1)
        check_range("max_steps", self.max_steps, low=1)
        check_range("time_budget_s", self.time_budget_s, low=0.0, low_open=True)
        check_range("seconds_per_step", self.seconds_per_step, low=0.0, low_open=True)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision = {self.precision!r} is not one of ['auto', 'fp32', 'bf16']")


@dataclass
class LoopResult:
    model: Any  # the trained module (best weights loaded)
    steps: int  # optimizer steps taken in all
    best: dict[str, Any] | None  # the best evaluation ({"step": ..., metric: ...}), None without eval_fn
    history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation, with train loss and lr
    wall_s: float = 0.0  # training time summed over every (resumed) run
    resumed_from: int | None = None  # step of the checkpoint this call resumed from
    precision: str = "fp32"  # what autocast ran in
    world_size: int = 1
    replans: list[dict[str, Any]] = field(default_factory=list)  # time budget: each re-plan's step, s/step, total


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier for 0-based `step`: linear warm-up over `warmup` steps, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def device_for(options: LoopOptions) -> torch.device:
    if options.device == "cpu" or (options.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingError(f"device = {options.device!r} asked for, but torch sees no CUDA device")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for autocast, or None for plain fp32. `auto` picks bf16 only where it runs natively."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if precision == "bf16":
        if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise TrainingError("precision = 'bf16' but this CPU has no bf16 support; use precision: fp32")
        return torch.bfloat16
    return torch.bfloat16 if native else None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def keep_freed_memory() -> bool:
    """On glibc (Linux), serve allocations up to 32 MB from the heap and keep up to 1 GB of freed memory there.

    A CPU training step allocates and frees many tensors of a few MB (activations, a KD loss's chunks). By default
    glibc maps each one fresh from the kernel and unmaps it on free, so every step pays page faults to zero the
    same memory again: a 2,048-token SmolLM2 distillation step took 3.96 s against 3.41 s with this set (median of
    7 steps, Intel Xeon with AMX). Returns whether it was applied (False off glibc); calling it again is harmless.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


@contextlib.contextmanager
def distributed_context(device: torch.device) -> Any:
    """(rank, world_size); joins the process group when started by torchrun / accelerate launch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    if not dist.is_initialized():  # joined once per process and kept: later stages (distill after finetune) reuse it
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    yield dist.get_rank(), dist.get_world_size()


def train_loop(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], Any],
    batches: BatchPlan,
    *,
    options: LoopOptions,
    work_dir: str | os.PathLike[str],
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    metric: str = "accuracy",
    higher_is_better: bool = True,
    fingerprint: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> LoopResult:
    """Train `model` on `batches` with `loss_fn` (see the module docstring); resumable from `work_dir`.

    fingerprint: anything that identifies the run besides options and model shapes (e.g. the data's hash); a
    checkpoint with another fingerprint is refused. on_step(step, logs) is called after every step (and after
    that step's checkpoint, if any): a hook for logging, or for tests that interrupt a run.
    """
    options.validate()
    per_epoch = len(batches)
    if per_epoch == 0:
        raise TrainingError("no training batches: the training data set is empty")
    cap = max(1, math.ceil(options.epochs * per_epoch))  # the most steps `epochs` allows
    total = cap
    if options.time_budget_s is not None and options.seconds_per_step is not None:
        total = max(1, min(cap, int(options.time_budget_s / options.seconds_per_step)))

    def stop_at(total: int) -> int:  # the last step this call takes: the schedule's end, or max_steps before it
        return min(total, options.max_steps) if options.max_steps else total

    stop = stop_at(total)
    warmup = int(math.ceil(options.warmup_ratio * total))
    pause = pause_fraction()  # edgellm._pause: stop part-way, checkpointed, to continue later
    pause_step = max(1, math.ceil(pause * total)) if pause is not None else None
    if pause_step is not None and pause_step >= stop:
        pause_step = None
    device = device_for(options)
    dtype = autocast_dtype(options.precision, device)
    if device.type == "cpu":
        keep_freed_memory()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters (every requires_grad is False)")
    ident = _fingerprint(model, options, per_epoch, fingerprint)

    with distributed_context(device) as (rank, world):
        done = _read_json(work / "result.json")
        if done is not None and resume:
            if done.get("fingerprint") != ident:
                raise TrainingError(f"work folder {str(work)!r} holds a finished run of a different configuration "
                                    "(options, model shapes or data differ); use another work folder, delete it, "
                                    "or pass resume=False")
            _load_weights(model, work / "best" / "model.safetensors")
            log.info("%s: already finished in %s; loaded its result", desc, work)
            return LoopResult(model=model, steps=done["steps"], best=done.get("best"), history=done["history"],
                              wall_s=done["wall_s"], resumed_from=done["steps"], precision=done["precision"],
                              world_size=done.get("world_size", world), replans=done.get("replans", []))
        if not resume and rank == 0:
            for sub in ("checkpoints", "best", "result.json"):
                _remove(work / sub)
        _barrier(world)

        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=options.learning_rate,
        )
        state: dict[str, Any] = {"step": 0, "best": None, "history": [], "wall_s": 0.0, "loss_sum": 0.0,
                                 "loss_count": 0, "total": total, "step_s": 0.0, "replans": []}
        resumed_from = None
        last = _latest_checkpoint(work / "checkpoints") if resume else None
        if last is not None:
            saved = _read_json(last / "trainer.json") or {}
            if saved.get("fingerprint") != ident:
                raise TrainingError(f"checkpoint {str(last)!r} belongs to a different run (options, model shapes or "
                                    "data differ); use another work folder, delete it, or pass resume=False")
            _load_weights(model, last / "model.safetensors")
            _load_optimizer(optimizer, last, saved)
            state.update({k: saved[k] for k in state if k in saved})
            resumed_from = state["step"]
            total = state["total"]
            stop = stop_at(total)
            log.info("%s: resuming from step %d of %d (%s)", desc, resumed_from, total, last)

        bar = _progress(progress and rank == 0, total, state["step"], desc)
        cached_epoch, epoch_batches = -1, []
        started = time.perf_counter()
        ema: float | None = None
        timed: list[float] = []  # this process's step times after its first WARM_STEPS
        try:
            for step in itertools.count(state["step"]):
                if step >= (pause_step or stop):
                    break
                step_started = time.perf_counter()
                epoch, pos = divmod(step, per_epoch)
                if epoch != cached_epoch:
                    epoch_batches = list(batches.epoch(epoch))
                    if len(epoch_batches) != per_epoch:
                        raise TrainingError(f"batch plan gave {len(epoch_batches)} batches for epoch {epoch}, "
                                            f"but len() says {per_epoch}")
                    cached_epoch = epoch
                _reseed(options.seed, step, rank)
                for group in optimizer.param_groups:
                    group["lr"] = options.learning_rate * lr_factor(step, total, warmup)
                batch = _to_device(_shard(epoch_batches[pos], rank, world), device)
                model.train()
                with _autocast(device, dtype):
                    out = loss_fn(model, batch)
                loss, parts = out if isinstance(out, tuple) else (out, {})
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(f"{desc}: the loss is {value} at step {step + 1}; lower the learning "
                                        "rate or check the data")
                loss.backward()
                if world > 1:
                    _all_reduce_grads(params, device)
                torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] = step + 1
                step_s = time.perf_counter() - step_started
                state["step_s"] += step_s
                if state["step"] - (resumed_from or 0) > WARM_STEPS:
                    timed.append(step_s)
                if options.time_budget_s is not None and timed and (
                        state["step"] == REPLAN_AFTER or state["step"] % options.eval_every == 0):
                    total = _replan(state, timed, options.time_budget_s, cap, world, device)
                    stop = stop_at(total)
                    if pause_step is not None and pause_step >= stop:
                        pause_step = None  # the run now ends before its pause point
                    if bar is not None:
                        bar.total = total
                state["loss_sum"] += value
                state["loss_count"] += 1
                ema = value if ema is None else 0.95 * ema + 0.05 * value
                logs = {"loss": value, **{k: float(v.detach() if isinstance(v, torch.Tensor) else v)
                                          for k, v in parts.items()}}
                if state["step"] % options.eval_every == 0 or state["step"] == stop:
                    record = {"step": state["step"], "epoch": round(state["step"] / per_epoch, 3),
                              "lr": optimizer.param_groups[0]["lr"],
                              "train_loss": state["loss_sum"] / max(1, state["loss_count"])}
                    state["loss_sum"], state["loss_count"] = 0.0, 0
                    if eval_fn is not None:
                        record.update(_evaluate(model, eval_fn, device, dtype))
                        if metric not in record:
                            raise TrainingError(f"eval_fn returned {sorted(record)} without the metric {metric!r}")
                        if _better(record[metric], state["best"], metric, higher_is_better):
                            state["best"] = {"step": state["step"], metric: record[metric]}
                            if rank == 0:
                                _save_weights(model, work / "best")
                    state["history"].append(record)
                    if bar is not None and eval_fn is not None:
                        bar.set_postfix(loss=f"{ema:.4f}", **{metric: f"{record[metric]:.2f}"}, refresh=False)
                    if state["step"] < stop:
                        state["wall_s"] += time.perf_counter() - started
                        started = time.perf_counter()
                        if rank == 0:
                            _save_checkpoint(work, model, optimizer, state, ident, options)
                        _barrier(world)
                if bar is not None:
                    if state["step"] % 10 == 0:
                        bar.set_postfix(loss=f"{ema:.4f}", **({metric: f"{state['best'][metric]:.2f}"}
                                                             if state["best"] else {}), refresh=False)
                    bar.update(1)
                if on_step is not None:
                    on_step(state["step"], logs)
        finally:
            if bar is not None:
                bar.close()
        state["wall_s"] += time.perf_counter() - started
        if pause_step is not None:
            _pause(model, optimizer, state, ident, options, work, eval_fn, metric, device, dtype, rank, world, total)
        if eval_fn is None or state["best"] is None:
            if rank == 0:
                _save_weights(model, work / "best")
        else:
            _barrier(world)
            _load_weights(model, work / "best" / "model.safetensors")
        result = LoopResult(model=model, steps=state["step"], best=state["best"], history=state["history"],
                            wall_s=round(state["wall_s"], 3), resumed_from=resumed_from,
                            precision="bf16" if dtype == torch.bfloat16 else "fp32", world_size=world,
                            replans=state["replans"])
        if rank == 0:
            _write_json(work / "result.json", {
                "fingerprint": ident, "steps": result.steps, "best": result.best, "history": result.history,
                "wall_s": result.wall_s, "precision": result.precision, "world_size": world, "metric": metric,
                "replans": result.replans,
            })
            _remove(work / "checkpoints")
        _barrier(world)
        return result


def _pause(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], ident: str,
           options: LoopOptions, work: Path, eval_fn: Callable | None, metric: str, device: torch.device,
           dtype: torch.dtype | None, rank: int, world: int, total: int) -> None:
    """Stop at the pause point: evaluate (outside the run's history and best, which stay those of an uninterrupted
    run), checkpoint the exact state unless that step has its checkpoint already, raise TrainingPaused."""
    evaluation = _evaluate(model, eval_fn, device, dtype) if eval_fn is not None else {}
    last = _latest_checkpoint(work / "checkpoints")
    if rank == 0 and (last is None or last.name != f"step-{state['step']:08d}"):
        _save_checkpoint(work, model, optimizer, state, ident, options)
    _barrier(world)
    log.info("paused at step %d of %d (%s)", state["step"], total, evaluation)
    raise TrainingPaused(step=state["step"], total=total, metric=metric, evaluation=evaluation, best=state["best"])


# --- steps ------------------------------------------------------------------------------------------------------

def _replan(state: dict[str, Any], timed: Sequence[float], budget_s: float, cap: int, world: int,
            device: torch.device) -> int:
    """The schedule's total steps from the measured step time (median of `timed`): the steps taken plus those
    that fit in what is left of `budget_s`, within [steps taken, cap]. Data-parallel ranks agree on the slowest."""
    step_s = float(np.median(timed))
    if world > 1:
        import torch.distributed as dist

        value = torch.tensor([step_s], dtype=torch.float64, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        step_s = float(value)
    left = max(0.0, budget_s - state["step_s"])
    total = max(state["step"], min(cap, state["step"] + int(left / step_s)))
    if total != state["total"]:
        log.info("time budget: %.2f s a step measured at step %d; the schedule now spans %d steps (was %d)",
                 step_s, state["step"], total, state["total"])
    state["replans"].append({"step": state["step"], "seconds_per_step": round(step_s, 4), "total": total})
    state["total"] = total
    return total


def _reseed(seed: int, step: int, rank: int) -> None:
    derived = int.from_bytes(hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()[:8], "little") >> 1
    torch.manual_seed(derived)
    random.seed(derived)
    np.random.seed(derived % (2**32))


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _evaluate(model: torch.nn.Module, eval_fn: Callable, device: torch.device, dtype: torch.dtype | None
              ) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(device, dtype):
            return {k: float(v) for k, v in eval_fn(model).items()}
    finally:
        model.train(was_training)


def _better(value: float, best: dict[str, Any] | None, metric: str, higher: bool) -> bool:
    if best is None:
        return True
    return value > best[metric] if higher else value < best[metric]


def _rows(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = _rows(v)
            if n is not None:
                return n
    return None


def _shard(batch: Any, rank: int, world: int) -> Any:
    """Rows rank::world of every tensor (and list) whose first dimension is the batch's rows."""
    if world == 1:
        return batch
    rows = _rows(batch)

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows:
            return v[rank::world]
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)) and len(v) == rows and not any(isinstance(x, torch.Tensor) for x in v):
            return type(v)(v[rank::world])
        if isinstance(v, (list, tuple)):
            return type(v)(cut(x) for x in v)
        return v

    return cut(batch)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _all_reduce_grads(params: list[torch.nn.Parameter], device: torch.device) -> None:
    """Average gradients over processes in one flat all-reduce (a missing gradient counts as zeros)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on a terminal (or notebook); None elsewhere, where every redraw would be a line of a log."""
    if not enabled or not live_progress():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=False)


# --- checkpoints ------------------------------------------------------------------------------------------------

def _fingerprint(model: torch.nn.Module, options: LoopOptions, per_epoch: int, extra: dict[str, Any] | None) -> str:
    opts = dataclasses.asdict(options)
    opts.pop("device")
    data = {
        "options": opts,
        "batches_per_epoch": per_epoch,
        "parameters": [(n, list(p.shape), p.requires_grad) for n, p in model.named_parameters()],
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _latest_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and (p / "trainer.json").is_file())
    return done[-1] if done else None


def _save_weights(model: torch.nn.Module, folder: Path) -> None:
    """model.safetensors into `folder`, atomically (written beside, then renamed)."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{_TMP_PREFIX}{uuid.uuid4().hex[:8]}.safetensors"
    save_model(model, str(tmp))
    _fsync(tmp)
    os.replace(tmp, folder / "model.safetensors")


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    if not path.is_file():
        raise TrainingError(f"weights {str(path)!r} are missing; the work folder is incomplete (delete it to restart)")
    device = next(model.parameters()).device
    load_model(model, str(path), strict=True, device=str(device))


def _save_checkpoint(work: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     ident: str, options: LoopOptions) -> None:
    from safetensors.torch import save_file, save_model

    root = work / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:08d}"
    tmp = root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "fingerprint": ident,
        **{k: state[k] for k in ("step", "best", "history", "wall_s", "loss_sum", "loss_count", "total", "step_s",
                                 "replans")},
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "options": dataclasses.asdict(options),
        "random_state": "derived from (seed, step, rank) before every step; nothing to restore",
    }
    (tmp / "trainer.json").write_text(json.dumps(payload, indent=1, default=str))
    for f in tmp.iterdir():
        _fsync(f)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in root.iterdir():  # keep the newest checkpoint only; drop leftovers of killed writes
        if old != final:
            _remove(old)
    log.debug("checkpoint %s", final)
    fault_point("checkpoint")  # reliability tests: EDGELLM_FAULT=<stage>:checkpoint kills here (inert otherwise)


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, saved: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in saved["optimizer"]["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved["optimizer"]["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise TrainingError(f"checkpoint {str(folder)!r}: optimizer state does not fit this model: {exc}") from exc


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    _fsync(tmp)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
