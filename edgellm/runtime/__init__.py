"""The torch-free runtime: load an artifact folder and run its task on ONNX Runtime or OpenVINO.

Imports only numpy, onnxruntime / openvino, tokenizers (and jinja2 for chat templates); never torch or
transformers. A test imports it with those blocked.

    from edgellm.runtime import load
    clf = load("artifacts/sentiment-minilm")               # ONNX Runtime on the CPU, the artifact's default model
    clf.classify(["what a film", "a waste of time"])       # [{"label": "positive", "score": 0.99}, ...]
    emb = load("artifacts/minilm-embed", backend="openvino").embed(["a sentence"])   # (1, 384) float32
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgellm.artifact import Manifest, ModelEntry, read_manifest, verify_artifact
from edgellm.errors import UnsupportedTargetError
from edgellm.runtime.base import Backend
from edgellm.runtime.tasks import Classifier, EdgeModel, Embedder

__all__ = ["load", "available_devices", "EdgeModel", "Classifier", "Embedder", "BACKEND_NAMES"]

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "onnxruntime", "openvino")


def available_devices() -> dict[str, list[str]]:
    """Devices each backend can use on this machine, e.g. {'onnxruntime': ['cpu'], 'openvino': ['cpu']}."""
    from edgellm.runtime.openvino import openvino_devices
    from edgellm.runtime.ort import ort_devices

    return {"onnxruntime": ort_devices(), "openvino": openvino_devices()}


def _pick_entry(manifest: Manifest, backend: str, model: str | None) -> ModelEntry:
    if backend not in BACKEND_NAMES:
        raise UnsupportedTargetError(f"unknown backend {backend!r}; choose one of {list(BACKEND_NAMES)}")
    if model is not None:
        entry = manifest.model(model)
        if backend != "auto" and entry.backend != backend:
            raise UnsupportedTargetError(f"model {model!r} is for {entry.backend}, not {backend}")
        return entry
    default = manifest.model()
    if backend in ("auto", default.backend):
        return default
    candidates = [m for m in manifest.models if m.backend == backend and m.target is None]
    candidates = candidates or [m for m in manifest.models if m.backend == backend]
    if not candidates:
        raise UnsupportedTargetError(
            f"the artifact has no {backend} model; it has {[f'{m.name} ({m.backend})' for m in manifest.models]}"
        )
    same = [m for m in candidates if m.precision == default.precision]
    return (same or candidates)[0]


def _make_backend(folder: Path, entry: ModelEntry, device: str, threads: int | None) -> Backend:
    options: dict[str, Any] = {}
    if entry.backend == "openvino":
        from edgellm.runtime.openvino import OpenVINOBackend

        options["inference_precision"] = entry.inference_precision or "f32"
        return OpenVINOBackend(folder / entry.path, device=device, threads=threads, options=options)
    from edgellm.runtime.ort import OrtBackend

    return OrtBackend(folder / entry.path, device=device, threads=threads, options=options)


def load(
    artifact: str | Path,
    *,
    device: str = "cpu",
    backend: str = "auto",
    model: str | None = None,
    threads: int | None = None,
    batch_size: int = 32,
    verify: bool = True,
) -> EdgeModel:
    """Load an artifact folder.

    Args:
        artifact: the folder holding `edgellm.json`.
        device: "cpu", "gpu", "cuda", "npu" ...; an unknown or absent device raises UnsupportedTargetError
            listing the available ones.
        backend: "auto" (the artifact's default model), "onnxruntime" or "openvino".
        model: a model name from the manifest, to pick one precision / target explicitly.
        threads: intra-op threads (None: the engine's default, all cores).
        batch_size: texts per inference call.
        verify: check every file's sha256 against the manifest first (IntegrityError on mismatch).
    """
    folder = Path(artifact)
    manifest = read_manifest(folder)
    if verify:
        verify_artifact(folder, manifest)
    if not isinstance(device, str) or not device:
        raise UnsupportedTargetError(f"device must be a non-empty string such as 'cpu', not {device!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UnsupportedTargetError(f"threads must be a positive int or None, not {threads!r}")
    entry = _pick_entry(manifest, backend, model)
    runner = _make_backend(folder, entry, device, threads)
    log.info("loaded %s: model %s on %s %s", folder, entry.name, runner.name, runner.device)
    if manifest.task == "text-classification":
        return Classifier(folder, manifest, entry, runner, batch_size=batch_size)
    if manifest.task == "feature-extraction":
        return Embedder(folder, manifest, entry, runner, batch_size=batch_size)
    from edgellm.runtime.generate import Generator

    return Generator(folder, manifest, entry, runner, batch_size=batch_size)
