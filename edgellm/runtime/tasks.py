"""Task front-ends over a backend: classify and embed. Generation lives in generate.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgellm.artifact import Manifest, ModelEntry
from edgellm.errors import InputError
from edgellm.runtime.base import Backend
from edgellm.runtime.text import TextEncoder, as_texts

__all__ = ["EdgeModel", "Classifier", "Embedder", "pool", "per_call_scales", "DEFAULT_BATCH", "BATCHING"]

log = logging.getLogger(__name__)

DEFAULT_BATCH = 32  # texts per inference call, for models whose result for a text does not depend on its batch
BATCHING = "one text per call where activation scales are per call"  # the rule above, in stages' cache keys


def per_call_scales(entry: ModelEntry) -> bool:
    """Whether the model quantizes its activations with scales computed per inference call (ONNX Runtime dynamic
    INT8: one scale per tensor, the whole batch's): a text's result then depends on the texts batched with it."""
    return entry.backend == "onnxruntime" and (entry.quantization or {}).get("mode") == "dynamic"


def _check_batch(batch_size: Any) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int or None, not {batch_size!r}")


class EdgeModel:
    """A loaded artifact: manifest, tokenizer and one compiled model. Safe to share between threads."""

    task = ""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        entry: ModelEntry,
        backend: Backend,
        *,
        batch_size: int | None = None,
    ) -> None:
        _check_batch(batch_size)
        self.folder = folder
        self.manifest = manifest
        self.entry = entry
        self.backend = backend
        # None: one text per call where batching would change results (per-call activation scales), else DEFAULT_BATCH
        self.batch_size = batch_size or (1 if per_call_scales(entry) else DEFAULT_BATCH)
        self.encoder = TextEncoder(folder / manifest.tokenizer, max_length=manifest.max_length)
        self._input_names = [spec.name for spec in backend.inputs]
        self._static_len = self._static_length()
        self._static_rows = self._static_batch()

    def _static_length(self) -> int | None:
        """Sequence length of a static-shape model (NPU-style export); the runtime pads every batch to it."""
        shapes = self.entry.static_shapes or {}
        for spec in self.backend.inputs:
            shape = shapes.get(spec.name) or spec.shape
            if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
                return int(shape[1])
        return None

    def _static_batch(self) -> int | None:
        shapes = self.entry.static_shapes or {}
        for spec in self.backend.inputs:
            shape = shapes.get(spec.name) or spec.shape
            if len(shape) == 2 and isinstance(shape[0], int) and shape[0] > 0:
                return int(shape[0])
        return None

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.labels

    def describe(self) -> dict[str, Any]:
        return {
            "artifact": str(self.folder),
            "task": self.task,
            "model": self.entry.name,
            "precision": self.entry.precision,
            "batch_size": self.batch_size,
            "batch_invariant": self.batch_size == 1 or not per_call_scales(self.entry),
            **self.backend.describe(),
        }

    def _forward(self, texts: list[str], output: str, batch_size: int | None = None) -> list[np.ndarray]:
        """Run `texts` in length-sorted batches of `batch_size` (None: the model's); return per-text rows of
        `output` and the attention masks."""
        static_batch = self._static_rows
        step = static_batch or batch_size or self.batch_size
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[Any] = [None] * len(texts)
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            feeds = self.encoder.encode([texts[i] for i in idx], pad_to=self._static_len)
            real = len(idx)
            if static_batch and real < static_batch:  # pad the batch with copies of the last row
                feeds = {k: np.concatenate([v, np.repeat(v[-1:], static_batch - real, 0)]) for k, v in feeds.items()}
            inputs = {name: feeds[name] for name in self._input_names if name in feeds}
            missing = [name for name in self._input_names if name not in feeds]
            if missing:
                raise InputError(f"model input(s) {missing} cannot be built from text by this runtime")
            for spec in self.backend.inputs:
                if inputs[spec.name].dtype != spec.dtype:
                    inputs[spec.name] = inputs[spec.name].astype(spec.dtype)
            (out,) = self.backend.run(inputs, [output])
            mask = feeds["attention_mask"]
            for j, i in enumerate(idx):
                rows[i] = (out[j], mask[j])
        return rows

    def __call__(self, texts: str | Sequence[str], **options: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - subclasses define the task


class Classifier(EdgeModel):
    task = "text-classification"

    def classify(self, texts: str | Sequence[str], *, top_k: int = 1, batch_size: int | None = None) -> list[Any]:
        """Label each text: `[{"label", "score"}]`, or with top_k > 1 a list of the top_k per text; `batch_size`
        texts per inference call (None: the model's)."""
        _check_batch(batch_size)
        items = as_texts(texts)
        labels = self.manifest.labels or []
        if not isinstance(top_k, int) or not 1 <= top_k <= len(labels):
            raise InputError(f"top_k must be an int in [1, {len(labels)}], not {top_k!r}")
        if not items:
            return []
        results: list[Any] = []
        for logits, _ in self._forward(items, self._logits_name(), batch_size):
            probs = _softmax(logits.astype(np.float64))
            best = np.argsort(-probs, kind="stable")[:top_k]
            ranked = [{"label": labels[k], "score": float(probs[k])} for k in best]
            results.append(ranked[0] if top_k == 1 else ranked)
        return results

    def scores(self, texts: str | Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, shape (N, num_labels); `batch_size` texts per inference call (None: the model's)."""
        _check_batch(batch_size)
        items = as_texts(texts)
        if not items:
            return np.zeros((0, len(self.manifest.labels or [])), dtype=np.float32)
        logits = np.stack([r for r, _ in self._forward(items, self._logits_name(), batch_size)]).astype(np.float64)
        return _softmax(logits).astype(np.float32)

    def _logits_name(self) -> str:
        return "logits" if "logits" in self.backend.output_names else self.backend.output_names[0]

    def __call__(self, texts: str | Sequence[str], **options: Any) -> list[Any]:
        return self.classify(texts, **options)


class Embedder(EdgeModel):
    task = "feature-extraction"

    @property
    def dim(self) -> int:
        shape = self.backend.output_shape(self._hidden_name())
        last = shape[-1] if shape else None
        return int(last) if last else int(self.manifest.source.get("hidden_size", 0))

    def embed(self, texts: str | Sequence[str], *, normalize: bool | None = None,
              batch_size: int | None = None) -> np.ndarray:
        """Sentence embeddings, shape (N, dim), float32: pooled as the manifest says, L2-normalised if it says so;
        `batch_size` texts per inference call (None: the model's)."""
        _check_batch(batch_size)
        items = as_texts(texts)
        norm = self.manifest.normalize if normalize is None else bool(normalize)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        pooled = []
        for hidden, mask in self._forward(items, self._hidden_name(), batch_size):
            pooled.append(pool(hidden.astype(np.float32), mask, self.manifest.pooling or "mean"))
        out = np.stack(pooled)
        if norm:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)

    def _hidden_name(self) -> str:
        names = self.backend.output_names
        return "last_hidden_state" if "last_hidden_state" in names else names[0]

    def __call__(self, texts: str | Sequence[str], **options: Any) -> np.ndarray:
        return self.embed(texts, **options)


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from token vectors: hidden (..., T, C) and mask (..., T) -> (..., C); "cls" takes the first
    token, "mean" averages the real ones (the numpy twin of edgellm.train.losses.mean_pool, which training needs
    differentiable)."""
    if mode == "cls":
        return hidden[..., 0, :]
    if mode == "mean":
        m = mask[..., : hidden.shape[-2]].astype(np.float32)[..., None]
        return (hidden * m).sum(-2) / np.maximum(m.sum(-2), 1e-9)
    raise InputError(f"unknown pooling {mode!r}; known: mean, cls")
