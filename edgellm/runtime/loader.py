"""`load`: an artifact folder -> the task object (Classifier / Embedder / Generator) on the chosen backend and device;
`edgellm.runtime` re-exports it."""

from __future__ import annotations

import logging
from pathlib import Path

from edgellm.artifact import PRECISIONS, Manifest, ModelEntry, read_manifest, verify_artifact
from edgellm.errors import UnsupportedTargetError
from edgellm.external_data import check_external_data
from edgellm.runtime.devices import best_target, open_backend
from edgellm.runtime.tasks import Classifier, EdgeModel, Embedder

__all__ = ["load", "BACKEND_NAMES"]

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "onnxruntime", "openvino")


def _pick_entry(manifest: Manifest, backend: str, model: str | None, target: str | None = None) -> ModelEntry:
    if backend not in BACKEND_NAMES:
        raise UnsupportedTargetError(f"unknown backend {backend!r}; choose one of {list(BACKEND_NAMES)}")
    if target is not None:
        return _target_entry(manifest, backend, model, target)
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


def _target_entry(manifest: Manifest, backend: str, model: str | None, target: str) -> ModelEntry:
    """The model built for `target`: the default model if it is one, else the lowest precision (the final one)."""
    built = [m for m in manifest.models if m.target == target and backend in ("auto", m.backend)]
    if model is not None:
        built = [m for m in built if m.name == model]
    if not built:
        targets = sorted({m.target for m in manifest.models if m.target})
        raise UnsupportedTargetError(
            f"the artifact has no {'' if backend == 'auto' else backend + ' '}model"
            f"{'' if model is None else ' named ' + repr(model)} built for target {target!r}; it was built for "
            f"{targets or 'no target (generic models only)'}. Rebuild it with --target {target}, or load without "
            "target="
        )
    for entry in built:
        if entry.name == manifest.default_model:
            return entry
    return max(built, key=lambda m: PRECISIONS.index(m.precision))  # int8 before fp16 before fp32


def load(
    artifact: str | Path,
    *,
    device: str = "auto",
    backend: str = "auto",
    model: str | None = None,
    target: str | None = None,
    strict: bool = False,
    threads: int | None = None,
    batch_size: int | None = None,
    verify: bool = True,
) -> EdgeModel:
    """Load an artifact folder.

    Args:
        artifact: the folder holding `edgellm.json`.
        device: "auto" (the first device of the model's target chain that runs here, e.g. npu -> gpu -> cpu;
            a generic model's chain is the CPU), or a device to demand: "cpu", "gpu", "cuda", "npu", "qnn" ...;
            an unknown or absent device raises UnsupportedTargetError listing the available ones.
        backend: "auto" (the artifact's default model), "onnxruntime" or "openvino".
        model: a model name from the manifest, to pick one precision / target explicitly.
        target: a device profile name (targets/NAME.yaml): load the model the artifact holds for it; "auto":
            the target whose first device this machine has (accelerators first), else the default model.
        strict: with device="auto", raise instead of falling back past the chain's first device.
        threads: intra-op threads (None: the target profile's, else the engine's default, all cores).
        batch_size: texts per inference call. None: one where the model quantizes activations with scales computed
            per call (ONNX Runtime dynamic INT8), so that a text's result never depends on the texts batched with
            it; otherwise 32. `describe()["batch_invariant"]` says which holds.
        verify: check every file's sha256 against the manifest first (IntegrityError on mismatch). ONNX
            external-data references are checked either way: one that leaves the folder, or names a file without
            a sha256 in the manifest, raises IntegrityError.

    `describe()["selection"]` says which device was picked, from which chain, and why others were passed over.
    """
    folder = Path(artifact)
    manifest = read_manifest(folder)
    if verify:
        verify_artifact(folder, manifest)
    if not isinstance(device, str) or not device:
        raise UnsupportedTargetError(f"device must be a non-empty string such as 'cpu', not {device!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UnsupportedTargetError(f"threads must be a positive int or None, not {threads!r}")
    if target == "auto":
        target = best_target(folder, manifest, backend)
    entry = _pick_entry(manifest, backend, model, target)
    if not verify:  # verify_artifact checked these already
        check_external_data(folder, entry.files, listed=manifest.files)
    runner = open_backend(folder, manifest, entry, device=device, threads=threads, strict=strict)
    log.info("loaded %s: model %s on %s %s", folder, entry.name, runner.name, runner.device)
    if manifest.task == "text-classification":
        return Classifier(folder, manifest, entry, runner, batch_size=batch_size)
    if manifest.task == "feature-extraction":
        return Embedder(folder, manifest, entry, runner, batch_size=batch_size)
    from edgellm.runtime.generate import Generator

    return Generator(folder, manifest, entry, runner, batch_size=batch_size)
