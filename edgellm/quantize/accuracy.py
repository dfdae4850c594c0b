"""Accuracy-aware INT8: rank the quantizable ops by how much error INT8 adds to each, then keep the fewest most
sensitive ones in float until the accuracy drop on validation is within the tolerance.

Ranking (`onnx_sensitivity`): run the float graph once on a few real inputs, read the float input of every
quantizable op, and measure in numpy the relative error that INT8 adds to that op's output when it alone is
quantized the way the mode does it (weights per channel or per tensor, activations per tensor, dynamic or from the
calibrated range); the error is taken per output channel and averaged, so that one large channel (an outlier)
does not hide the damage its scale does to all the others. Search (`search_fallback`): try 0, 1, 2, 4 ... ops in float until the tolerance holds, then
bisect down to the fewest; raise QuantizationError when even `limit` ops in float do not reach it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgellm.errors import ConfigError, QuantizationError

__all__ = ["FallbackResult", "search_fallback", "onnx_sensitivity", "check_tolerance"]

log = logging.getLogger(__name__)


def check_tolerance(tolerance: Any) -> float:
    """A tolerance in accuracy points: a finite number >= 0."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not np.isfinite(tolerance):
        raise ConfigError(f"tolerance must be a number of accuracy points >= 0, not {tolerance!r}")
    if tolerance < 0:
        raise ConfigError(
            f"tolerance = {tolerance} is negative: it is the largest accuracy drop (points below FP32) allowed; "
            "give 0 or more"
        )
    return float(tolerance)


@dataclass
class FallbackResult:
    """What the accuracy-aware search kept in float, and every trial it made."""

    excluded: list[str]  # node names kept in float (most sensitive first)
    metric: float  # validation metric of the chosen model
    baseline: float  # the FP32 model's
    tolerance: float
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"float_ops": k, "metric": m, "drop": d}
    ranking: list[dict[str, Any]] = field(default_factory=list)  # most sensitive first: {"node", "op", "error"}

    @property
    def drop(self) -> float:
        return self.baseline - self.metric

    def describe(self, top: int = 10) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance,
            "baseline": self.baseline,
            "metric": self.metric,
            "drop": self.drop,
            "fell_back": list(self.excluded),
            "trials": list(self.trials),
            "most_sensitive": self.ranking[:top],
        }


def search_fallback(
    ranked: Sequence[str],
    trial: Callable[[list[str]], float],
    *,
    baseline: float,
    tolerance: float,
    limit: int,
    label: str = "model",
) -> FallbackResult:
    """Fewest of the most sensitive ops (`ranked`, most sensitive first) to keep in float so that
    `baseline - trial(kept) <= tolerance`. `trial` builds and evaluates the model with those ops in float.

    Raises QuantizationError naming the best drop reached when `limit` ops in float are not enough.
    """
    tolerance = check_tolerance(tolerance)
    limit = max(0, min(int(limit), len(ranked)))
    results: dict[int, float] = {}

    def run(k: int) -> bool:
        if k not in results:
            results[k] = float(trial(list(ranked[:k])))
            log.info("%s with %d op(s) in float: metric %.3f (FP32 %.3f, drop %.3f)", label, k, results[k],
                     baseline, baseline - results[k])
        return baseline - results[k] <= tolerance + 1e-9

    def done(k: int) -> FallbackResult:
        trials = [{"float_ops": n, "metric": m, "drop": baseline - m} for n, m in sorted(results.items())]
        return FallbackResult(list(ranked[:k]), results[k], baseline, tolerance, trials)

    if run(0):
        return done(0)
    passing, failing, k = None, 0, 1
    while k <= limit:
        if run(k):
            passing = k
            break
        failing = k
        k = limit if k < limit and k * 2 > limit else k * 2
    if passing is None:
        best = min(results.items(), key=lambda item: baseline - item[1])
        raise QuantizationError(
            f"{label}: the accuracy tolerance of {tolerance} points cannot be met: FP32 scores {baseline:.2f}; "
            f"with up to {limit} of the {len(ranked)} quantizable ops kept in float the smallest drop is "
            f"{baseline - best[1]:.2f} points ({best[0]} ops in float). Raise the tolerance, allow more fallback "
            "(quantize.max_fallback), or use a milder mode (weight-only)"
        )
    while passing - failing > 1:  # bisect for the fewest ops in float that still pass
        mid = (passing + failing) // 2
        if run(mid):
            passing = mid
        else:
            failing = mid
    return done(passing)


# -- sensitivity of ONNX ops ---------------------------------------------------------------------------------------


def _fake_quant_activation(x: np.ndarray, lo: float, hi: float, bits: int = 8) -> np.ndarray:
    """Asymmetric unsigned per-tensor quantize-dequantize over [lo, hi] (0 always inside, as ORT does)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = 2**bits - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    zero = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero, 0, levels)
    return ((q - zero) * scale).astype(np.float32)


def _fake_quant_weight(w: np.ndarray, *, per_channel: bool, reduce_range: bool,
                       block: int | None = None) -> np.ndarray:
    """Symmetric int8 quantize-dequantize of a (K, N) weight: per output channel (axis N), per tensor, or in
    blocks of `block` along K for each output channel."""
    qmax = 63.0 if reduce_range else 127.0
    if block:
        k = w.shape[0]
        pad = (-k) % block
        wp = np.pad(w, ((0, pad), (0, 0)))
        blocks = wp.reshape(-1, block, w.shape[1])  # (K/block, block, N)
        scale = np.abs(blocks).max(axis=1, keepdims=True) / qmax
        scale[scale == 0] = 1.0
        out = np.clip(np.round(blocks / scale), -qmax, qmax) * scale
        return out.reshape(-1, w.shape[1])[:k].astype(np.float32)
    if per_channel:
        scale = np.abs(w).max(axis=0, keepdims=True) / qmax  # (1, N): one scale per output channel
    else:
        scale = np.array(np.abs(w).max() / qmax)
    scale = np.where(scale == 0, 1.0, scale)
    return (np.clip(np.round(w / scale), -qmax, qmax) * scale).astype(np.float32)


def onnx_sensitivity(
    model_path: str | Path,
    candidates: Sequence[Any],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    mode: str,
    per_channel: bool,
    reduce_range: bool,
    block_size: int = 32,
) -> list[dict[str, Any]]:
    """Relative output error INT8 adds to each candidate op alone, on `feeds`; most sensitive first.

    `candidates` are `QuantNode`s of the graph at `model_path` (see `OnnxQuantizer.candidates`).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    weights = {init.name: init for init in model.graph.initializer}
    wanted = sorted({c.activation for c in candidates if c.activation})
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory(prefix="edgellm-sens-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save_model(model, str(path), save_as_external_data=model.ByteSize() > 1_800_000_000,
                        all_tensors_to_one_file=True, location="probe.onnx.data")
        del model
        from edgellm.quantize.ort import _run

        outputs = _run(path, feeds, outputs=wanted) if wanted else [[] for _ in feeds]
    acts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for row in outputs:
        for name, value in zip(wanted, row):
            acts[name].append(np.asarray(value, dtype=np.float32))
    ranges = {name: (min(float(v.min()) for v in vals), max(float(v.max()) for v in vals))
              for name, vals in acts.items() if vals}
    ranking = []
    for cand in candidates:
        w = numpy_helper.to_array(weights[cand.weight]).astype(np.float32)
        if cand.transposed:
            w = w.T
        if cand.activation is None:  # an embedding table: weight-only, per tensor uint8
            wq = _fake_quant_activation(w, float(w.min()), float(w.max()))
            err = float(np.linalg.norm(w - wq) / max(np.linalg.norm(w), 1e-12))
        else:
            if mode == "weight-only":
                wq = _fake_quant_weight(w, per_channel=True, reduce_range=False, block=block_size)
            else:
                wq = _fake_quant_weight(w, per_channel=per_channel, reduce_range=reduce_range)
            num = np.zeros(w.shape[1])
            den = np.zeros(w.shape[1])
            for x in acts.get(cand.activation, []):
                x2 = x.reshape(-1, x.shape[-1])
                if x2.shape[-1] != w.shape[0]:
                    continue
                if mode == "dynamic":
                    xq = _fake_quant_activation(x2, float(x2.min()), float(x2.max()))
                elif mode == "static":
                    xq = _fake_quant_activation(x2, *ranges[cand.activation])
                else:
                    xq = x2
                y = x2 @ w
                num += ((y - xq @ wq) ** 2).sum(0)
                den += (y**2).sum(0)
            # per output channel, then averaged: one huge channel must not hide the error of all the others
            live = den > 0
            err = float(np.mean(np.sqrt(num[live] / den[live]))) if live.any() else 0.0
        ranking.append({"node": cand.name, "op": cand.op_type, "error": err})
    ranking.sort(key=lambda r: -r["error"])
    return ranking
