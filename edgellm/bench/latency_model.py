"""Latency and size of an encoder from its shape, fitted on shapes timed on one device (edgellm fit's cost model).

A transformer encoder at batch 1 and a fixed input length spends its time in a fixed part (graph start, embedding,
pooling), a per-layer part (layer norms, residual adds, activation quantization), the attention block (Q, K, V and
output projections plus scores and weighted sum: proportional to the heads kept) and the FFN (proportional to its
neurons). The cost model is linear in those four terms, its coefficients non-negative and fitted per engine
(ONNX Runtime dynamic INT8, OpenVINO static INT8, ...) on shapes exported and timed on the device, minimising the
relative error:

    rows = [{"engine": "onnxruntime/dynamic", "shape": shape.to_dict(), "tokens": 128, "p50_ms": 1.52,
             "size_bytes": 8_400_000}, ...]
    model = LatencyModel.fit(rows)
    model.predict("onnxruntime/dynamic", shape, tokens=128)      # (p50 ms, size in bytes)

A `cls_only` shape runs its last layer for the [CLS] position only: its query, output projection and FFN cost one
token instead of all (keys and values still cost every token). Size on disk is linear in the embedding parameters
and the rest, fitted the same way (INT8 engines store most weights in one byte). Numpy only.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from edgellm.errors import ConfigError

__all__ = ["EncoderShape", "LatencyModel", "EngineFit", "latency_features", "size_features", "nnls",
           "LATENCY_TERMS", "SIZE_TERMS"]

LATENCY_TERMS = ("fixed", "layers", "attention_macs", "ffn_macs")
SIZE_TERMS = ("fixed", "embedding_params", "other_params")


@dataclass
class EncoderShape:
    """What an encoder's cost depends on: per-layer attention heads and FFN widths, widths, vocabulary."""

    hidden: int  # model width
    head_dim: int  # width of one attention head
    heads: list[float]  # attention heads per layer (a mean may be fractional in a prediction)
    ffn: list[float]  # FFN neurons per layer
    vocab: int  # embedding rows
    positions: int = 512  # position embedding rows
    type_vocab: int = 2  # token type embedding rows
    labels: int = 0  # classifier outputs (0: an embedding model, no pooler / classifier)
    cls_only: bool = False  # the last layer runs for the [CLS] position only

    @property
    def layers(self) -> int:
        return len(self.heads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderShape:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def latency_features(shape: EncoderShape, tokens: int) -> np.ndarray:
    """[1, layers, attention MACs, FFN MACs] of one call at batch 1 and `tokens` tokens."""
    h, d, t = shape.hidden, shape.head_dim, tokens
    attention = ffn = 0.0
    for i, (heads, neurons) in enumerate(zip(shape.heads, shape.ffn)):
        q = 1 if shape.cls_only and i == shape.layers - 1 else t  # tokens whose query, output and FFN run
        width = heads * d
        attention += q * h * width + 2 * t * h * width + q * width * h + 2 * q * t * width
        ffn += 2 * q * h * neurons
    return np.array([1.0, float(shape.layers), attention, ffn])


def size_features(shape: EncoderShape) -> np.ndarray:
    """[1, embedding parameters, other parameters]."""
    h, d = shape.hidden, shape.head_dim
    embedding = (shape.vocab + shape.positions + shape.type_vocab) * h + 2 * h
    other = 0.0
    for heads, neurons in zip(shape.heads, shape.ffn):
        width = heads * d
        other += 4 * h * width + 3 * width + h + 2 * neurons * h + neurons + h + 4 * h
    if shape.labels:
        other += h * h + h + h * shape.labels + shape.labels
    return np.array([1.0, float(embedding), float(other)])


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b|| with x >= 0, exactly, for the few columns here: the best least-squares fit over every
    subset of columns whose own solution is non-negative."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a.shape[1]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-300)
    scaled = a / scale
    best, best_err = np.zeros(n), float(np.sum(b ** 2))
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            sub = scaled[:, cols]
            x, *_ = np.linalg.lstsq(sub, b, rcond=None)
            if np.any(x < 0):
                continue
            err = float(np.sum((sub @ x - b) ** 2))
            if err < best_err - 1e-12 * max(best_err, 1.0):
                best_err = err
                best = np.zeros(n)
                best[list(cols)] = x
    return best / scale


@dataclass
class EngineFit:
    """The fitted coefficients of one engine, and how well they reproduce the shapes they were fitted on."""

    engine: str
    tokens: int
    latency: list[float]  # ms per LATENCY_TERMS unit
    size: list[float]  # bytes per SIZE_TERMS unit
    rows: int  # timed shapes it was fitted on
    fit_error_pct: float  # median |predicted - timed| / timed over those shapes, in percent
    errors_pct: list[float] = field(default_factory=list)  # the same, per shape
    size_error_pct: float = 0.0  # median |predicted - written| / written size over those shapes, in percent

    def predict(self, shape: EncoderShape) -> tuple[float, float]:
        p50 = float(latency_features(shape, self.tokens) @ np.asarray(self.latency))
        size = float(size_features(shape) @ np.asarray(self.size))
        return p50, size


@dataclass
class LatencyModel:
    """One EngineFit per engine, all at one input length."""

    engines: dict[str, EngineFit]

    @classmethod
    def fit(cls, rows: Sequence[dict[str, Any]], *, tokens: int | None = None) -> LatencyModel:
        """Fit every engine found in `rows` ({"engine", "shape", "tokens", "p50_ms", "size_bytes"}) at `tokens`
        (default: the rows' one length)."""
        lengths = sorted({int(r["tokens"]) for r in rows})
        if tokens is None:
            if len(lengths) != 1:
                raise ConfigError(f"latency rows at several lengths {lengths}: name the one to fit")
            tokens = lengths[0]
        chosen = [r for r in rows if int(r["tokens"]) == tokens]
        if not chosen:
            raise ConfigError(f"no latency rows at {tokens} tokens (the rows have {lengths})")
        engines = {}
        for engine in sorted({r["engine"] for r in chosen}):
            mine = [r for r in chosen if r["engine"] == engine]
            shapes = [EncoderShape.from_dict(r["shape"]) for r in mine]
            times = np.array([float(r["p50_ms"]) for r in mine])
            sizes = np.array([float(r["size_bytes"]) for r in mine])
            # relative errors count, not milliseconds: a small plan's 0.1 ms matter as much as a big one's 1 ms
            lat = nnls(np.stack([latency_features(s, tokens) for s in shapes]) / times[:, None], np.ones(len(mine)))
            size = nnls(np.stack([size_features(s) for s in shapes]) / sizes[:, None], np.ones(len(mine)))
            fit = EngineFit(engine=engine, tokens=tokens, latency=lat.tolist(), size=size.tolist(), rows=len(mine),
                            fit_error_pct=0.0)
            errors = [abs(fit.predict(s)[0] - t) / t * 100.0 for s, t in zip(shapes, times)]
            fit.errors_pct = [round(e, 2) for e in errors]
            fit.fit_error_pct = float(np.median(errors)) if errors else 0.0
            fit.size_error_pct = float(np.median([abs(fit.predict(s)[1] - b) / b * 100.0
                                                  for s, b in zip(shapes, sizes)])) if len(sizes) else 0.0
            engines[engine] = fit
        return cls(engines)

    def predict(self, engine: str, shape: EncoderShape) -> tuple[float, float]:
        """(p50 ms, size in bytes) of `shape` on `engine`."""
        if engine not in self.engines:
            raise ConfigError(f"the latency model has no engine {engine!r} (it has {sorted(self.engines)})")
        return self.engines[engine].predict(shape)

    def to_dict(self) -> dict[str, Any]:
        return {name: {**asdict(fit), "latency_terms": list(LATENCY_TERMS), "size_terms": list(SIZE_TERMS)}
                for name, fit in self.engines.items()}
