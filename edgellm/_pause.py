"""Pausing a training run part-way through its schedule, to continue it later from the same point.

`edgellm fit` trains many plans with successive halving: each plan's distillation runs for a share of its schedule
(a rung), the promising ones continue. A run started inside `pause_training(fraction)` stops once `fraction` of its
optimizer steps are done (the learning-rate schedule still spans the whole run), evaluates, writes a checkpoint and
raises `TrainingPaused`; calling it again (with a later fraction, or outside the block) resumes from that checkpoint
and follows exactly the path of an uninterrupted run (edgellm.train.loop). A paused stage of the pipeline leaves no
stage.json, like an interrupted one.

    with pause_training(1 / 3):
        try:
            cache.run("distill", material, fn)
        except TrainingPaused as paused:
            paused.evaluation, paused.best, paused.stage, paused.key   # validation at the pause; the stage paused

Torch-free: the pipeline imports it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

__all__ = ["TrainingPaused", "pause_training", "pause_fraction"]

_PAUSE: contextvars.ContextVar[float | None] = contextvars.ContextVar("edgellm_pause", default=None)


class TrainingPaused(Exception):
    """A training run stopped at its pause point; its checkpoint holds everything needed to continue.

    Not an EdgeLLMError: nothing went wrong. `stage`, `key` and `folder` are set by the stage cache when a
    pipeline stage was running."""

    def __init__(self, *, step: int, total: int, metric: str, evaluation: dict[str, float],
                 best: dict[str, Any] | None) -> None:
        super().__init__(f"training paused at step {step} of {total}")
        self.step = step
        self.total = total
        self.metric = metric
        self.evaluation = evaluation  # eval_fn at the pause point ({} without one)
        self.best = best  # the best evaluation so far ({"step": ..., metric: ...}), as the run keeps it
        self.stage: str | None = None
        self.key: str | None = None
        self.folder: Any = None

    @property
    def score(self) -> float | None:
        """The run's metric so far: the better of the pause evaluation and the best kept (higher is better)."""
        values = [d[self.metric] for d in (self.evaluation, self.best or {}) if self.metric in d]
        return max(values) if values else None


@contextlib.contextmanager
def pause_training(fraction: float | None) -> Iterator[None]:
    """Training runs started in this block pause after `fraction` (0 < fraction < 1) of their steps; None or 1
    runs them to the end."""
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"pause fraction {fraction!r} is outside (0, 1]")
    token = _PAUSE.set(None if fraction is None or fraction >= 1.0 else float(fraction))
    try:
        yield
    finally:
        _PAUSE.reset(token)


def pause_fraction() -> float | None:
    """The pause point in effect (a share of the run's steps), or None."""
    return _PAUSE.get()
