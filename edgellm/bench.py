"""Device benchmarks: timing statistics and machine facts. Every latency number in edgellm comes from here.

    stats = time_calls(lambda: model.classify(["text"]), warmup=10, repeat=100)
    stats["p50_ms"], stats["p90_ms"], stats["p99_ms"]
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["percentile", "summarize_ms", "time_calls", "machine_info"]


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


def machine_info() -> dict[str, Any]:
    """CPU model, flags that matter for INT8 (VNNI, AVX-512, AVX2, NEON), cores, library versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": platform.processor() or "",
        "cpu_flags": [],
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
        for line in text.splitlines():
            if line.startswith("model name") and not info["cpu_model"].strip("x86_64"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "asimd", "asimddp")
                info["cpu_flags"] = [f for f in wanted if f in flags]
                break
    except OSError:
        pass
    versions = {}
    for name in ("numpy", "onnxruntime", "openvino", "tokenizers", "torch", "transformers", "optimum", "nncf"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            continue
    info["versions"] = versions
    return info
