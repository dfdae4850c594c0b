"""Timing statistics: the one place latency is measured."""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["percentile", "summarize_ms", "time_calls", "time_interleaved", "rounds_for", "cycling", "ROUNDS",
           "SETTLE_CALLS", "SWITCH_PAUSE_S"]

# Alternating between models: the pause before each model's turn. ONNX Runtime's idle worker threads keep spinning
# for tens of milliseconds after a call; on a 2-core machine the previous model's spinning threads held the next
# one's first calls to 2-3x their latency, and after 2, 5, 10 or 20 ms of pause still 1.5-2.5x; after 50 ms they
# ran at their steady speed (ONNX Runtime 1.32, AMD EPYC, two MiniLM graphs, 32 tokens).
SWITCH_PAUSE_S = 0.1
SETTLE_CALLS = 2  # then untimed calls at the start of each turn: the model's own threads woken, its weights cached
ROUNDS = 5  # alternating rounds the timed calls are split into


def cycling(fn: Callable[[Any], Any], items: Sequence[Any]) -> Callable[[], Any]:
    """A call of `fn` on the next of `items` each time (cycling): what a latency series times."""
    it = itertools.cycle(items)
    return lambda: fn(next(it))


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not len(samples):
        raise ValueError("no samples")
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Per-call durations in seconds -> milliseconds statistics."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "repeat": int(ms.size),
    }


def time_calls(fn: Callable[[], Any], *, warmup: int = 10, repeat: int = 50) -> dict[str, float]:
    """Call `fn` warmup times untimed, then `repeat` times timed with perf_counter; ms statistics."""
    for _ in range(warmup):
        fn()
    durations = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return summarize_ms(durations)


def rounds_for(rounds: int, repeat: int) -> int:
    """The rounds `time_interleaved` splits `repeat` timed calls into: `rounds`, at least 1, at most one call each."""
    return max(1, min(rounds, repeat))


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 10, repeat: int = 50, rounds: int = ROUNDS,
                     settle: int = SETTLE_CALLS, pause_s: float = SWITCH_PAUSE_S) -> dict[str, dict[str, float]]:
    """Time several callables in alternating rounds (a, b, b, a, a, b, ...: the order reversed every other round),
    `repeat` timed calls each in all, so that a machine getting busier or quieter during the run touches them alike;
    ms statistics per name. Each callable's turn starts with a `pause_s` sleep (the previous one's threads stop
    spinning) and `settle` untimed calls (its own threads woken, its weights back in the caches)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds = rounds_for(rounds, repeat)
    names = list(fns)
    durations: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        count = repeat // rounds + (1 if r < repeat % rounds else 0)
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = fns[name]
            time.sleep(pause_s)
            for _ in range(settle):
                fn()
            for _ in range(count):
                start = time.perf_counter()
                fn()
                durations[name].append(time.perf_counter() - start)
    return {name: summarize_ms(values) for name, values in durations.items()}
