"""The artifact folder: manifest schema (format v1), hashing, verification and atomic publishing.

An artifact is one folder that the runtime needs nothing beyond::

    edgellm.json            manifest (this module)
    tokenizer.json          Hugging Face `tokenizers` file
    model.onnx              ONNX model(s); more than one when several precisions or targets were emitted
    openvino_model.xml/.bin OpenVINO IR, when emitted

This module is torch-free: the runtime imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edgellm.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    FormatVersionError,
    IntegrityError,
    OutputExistsError,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "TASKS",
    "BACKENDS",
    "PRECISIONS",
    "ModelEntry",
    "Manifest",
    "read_manifest",
    "write_manifest",
    "verify_artifact",
    "staging",
    "sha256_file",
    "is_artifact",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "edgellm.json"
TASKS = ("text-classification", "feature-extraction", "text-generation")
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
_STAGING_PREFIX = ".edgellm-staging-"
_OLD_PREFIX = ".edgellm-replaced-"


@dataclass
class ModelEntry:
    """One runnable model inside the artifact."""

    name: str  # unique within the artifact, e.g. "onnx-fp32", "openvino-int8", "intel-npu"
    path: str  # main file, relative to the artifact folder (model.onnx, openvino_model.xml)
    backend: str  # one of BACKENDS
    precision: str  # one of PRECISIONS: the weights' precision
    files: list[str] = field(default_factory=list)  # every file this model needs (main file included)
    target: str | None = None  # device profile it was built for (targets/NAME.yaml), None = generic
    static_shapes: dict[str, list[int]] | None = None  # fixed input shapes; the runtime pads to them
    inference_precision: str | None = None  # OpenVINO INFERENCE_PRECISION_HINT used when measured (f32, bf16, f16)
    quantization: dict[str, Any] | None = None  # mode, preset, calibration, excluded nodes ...
    metrics: dict[str, Any] = field(default_factory=dict)  # accuracy, size, diff vs torch for this model

    def __post_init__(self) -> None:
        if not self.files:
            self.files = [self.path]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelEntry:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ArtifactError(f"manifest model entry has unknown keys {unknown}; known: {sorted(names)}")
        missing = [k for k in ("name", "path", "backend", "precision") if k not in data]
        if missing:
            raise ArtifactError(f"manifest model entry {data.get('name', '?')!r} lacks {missing}")
        entry = cls(**data)
        if entry.backend not in BACKENDS:
            raise ArtifactError(f"manifest model {entry.name!r} has unknown backend {entry.backend!r}; known: {BACKENDS}")
        if entry.precision not in PRECISIONS:
            raise ArtifactError(
                f"manifest model {entry.name!r} has unknown precision {entry.precision!r}; known: {PRECISIONS}"
            )
        return entry


@dataclass
class Manifest:
    """The `edgellm.json` of an artifact. Field order is the order written."""

    task: str  # one of TASKS
    models: list[ModelEntry]
    default_model: str  # name of the model `load()` picks when none is asked for
    tokenizer: str = "tokenizer.json"
    max_length: int = 128  # texts are truncated to this many tokens (special tokens included)
    labels: list[str] | None = None  # class names by class id (text-classification)
    pooling: str | None = None  # "mean" or "cls" (feature-extraction)
    normalize: bool = False  # L2-normalise embeddings (feature-extraction)
    inputs: list[str] = field(default_factory=lambda: ["input_ids", "attention_mask"])  # model input names
    generation: dict[str, Any] | None = None  # text-generation: eos ids, KV-cache layout, chat template ...
    source: dict[str, Any] = field(default_factory=dict)  # model it came from: path / hub id, architecture, params
    data: dict[str, Any] | None = None  # data set and the seeded split used
    recipe: dict[str, Any] | None = None  # the recipe that produced it (compress)
    metrics: dict[str, Any] = field(default_factory=dict)  # stage name -> metrics, in pipeline order
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relpath -> {sha256, bytes}; filled on write
    format_version: int = FORMAT_VERSION
    edgellm_version: str = ""
    created: str = ""

    def model(self, name: str | None = None) -> ModelEntry:
        wanted = name or self.default_model
        for entry in self.models:
            if entry.name == wanted:
                return entry
        raise ArtifactError(
            f"artifact has no model named {wanted!r}; it has {[m.name for m in self.models]}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {"format": "edgellm-artifact", **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict):
            raise ArtifactError("manifest is not a JSON object")
        data = dict(data)
        data.pop("format", None)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise FormatVersionError(
                f"manifest format_version is {version!r}; this edgellm reads version {FORMAT_VERSION}. "
                "Re-export the artifact with this edgellm version, or upgrade edgellm."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ArtifactError(f"manifest has unknown keys {unknown}")
        for key in ("task", "models", "default_model"):
            if key not in data:
                raise ArtifactError(f"manifest lacks the required key {key!r}")
        if data["task"] not in TASKS:
            raise ArtifactError(f"manifest task {data['task']!r} is not one of {TASKS}")
        if not isinstance(data["models"], list) or not data["models"]:
            raise ArtifactError("manifest lists no models")
        data["models"] = [ModelEntry.from_dict(m) for m in data["models"]]
        manifest = cls(**data)
        manifest.model()  # default_model must name one of the models
        if manifest.task == "text-classification" and not manifest.labels:
            raise ArtifactError("text-classification manifest has no labels")
        return manifest


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_artifact(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def _check_relpath(folder: Path, rel: str) -> Path:
    """Resolve `rel` inside `folder`; refuse absolute paths and paths that leave the folder."""
    if os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise IntegrityError(f"manifest names {rel!r}, an absolute path; artifact files must be inside the folder")
    full = (folder / rel).resolve()
    root = folder.resolve()
    if full != root and root not in full.parents:
        raise IntegrityError(f"manifest names {rel!r}, which points outside the artifact folder {folder}")
    return full


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """Read and validate `edgellm.json` (no hash check; see `verify_artifact`)."""
    root = Path(folder)
    if not root.exists():
        raise ArtifactNotFoundError(f"artifact folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ArtifactError(f"{str(root)!r} is a file, not an artifact folder")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactNotFoundError(
            f"{str(root)!r} has no {MANIFEST_NAME}: it is not an edgellm artifact (export one with `edgellm export`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    try:
        manifest = Manifest.from_dict(data)
    except TypeError as exc:  # a field of the wrong shape
        raise ArtifactError(f"{path} is malformed: {exc}") from exc
    for rel in [manifest.tokenizer, *(f for m in manifest.models for f in m.files)]:
        _check_relpath(root, rel)
    return manifest


def verify_artifact(folder: str | os.PathLike[str], manifest: Manifest | None = None) -> Manifest:
    """Check every file the manifest lists against its sha256; raise IntegrityError naming the first bad file."""
    root = Path(folder)
    manifest = manifest or read_manifest(root)
    needed = {manifest.tokenizer, *(f for m in manifest.models for f in m.files)}
    unlisted = sorted(needed - set(manifest.files))
    if unlisted:
        raise IntegrityError(f"manifest records no sha256 for {unlisted}; the artifact was not written by edgellm")
    for rel, info in manifest.files.items():
        full = _check_relpath(root, rel)
        if not full.is_file():
            raise IntegrityError(f"artifact file {rel!r} is missing from {root}")
        actual = sha256_file(full)
        if actual != info.get("sha256"):
            raise IntegrityError(
                f"artifact file {rel!r} was changed after export: sha256 {actual[:16]}... "
                f"does not match the manifest's {str(info.get('sha256'))[:16]}... Re-export it."
            )
    return manifest


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Hash every file in `folder` (the manifest excepted) into `manifest.files`, then write `edgellm.json`."""
    from edgellm import __version__

    root = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        rel = path.relative_to(root).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    needed = {manifest.tokenizer, *(f for m in manifest.models for f in m.files)}
    missing = sorted(needed - set(files))
    if missing:
        raise ArtifactError(f"manifest names files that were not written: {missing}")
    manifest.files = files
    manifest.edgellm_version = __version__
    manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False, default=_json_default)
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _clean_stale(parent: Path, name: str) -> None:
    """Remove staging folders left by killed runs for this output name."""
    for prefix in (_STAGING_PREFIX, _OLD_PREFIX):
        for stale in parent.glob(f"{prefix}{name}-*"):
            pid = stale.name.rsplit("-", 2)[-2] if stale.name.count("-") >= 2 else ""
            if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue  # another live process is writing it
            shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output(output: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse an existing output unless `overwrite`; never replace a folder that is not an edgellm artifact."""
    out = Path(output)
    if out.exists():
        if not overwrite:
            raise OutputExistsError(f"output {str(out)!r} exists; pass --overwrite (overwrite=True) to replace it")
        if out.is_file() or (any(out.iterdir()) and not is_artifact(out)):
            raise OutputExistsError(
                f"output {str(out)!r} exists and is not an edgellm artifact; refusing to replace it "
                "(user files are never deleted). Choose another output folder."
            )
    return out


@contextlib.contextmanager
def staging(output: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Write an artifact atomically: yield an empty staging folder beside `output`, publish it on success.

    On any exception the staging folder is removed and an existing `output` is left untouched. Publishing renames
    the old artifact aside, renames the staging folder into place, then deletes the old one, so a reader sees the
    old artifact, or (for an instant) none, or the new one; never a half-written one.
    """
    out = check_output(output, overwrite=overwrite)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(parent, out.name)
    stage = parent / f"{_STAGING_PREFIX}{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        if not is_artifact(stage):
            raise ArtifactError("internal: the staging folder was closed without a manifest")
        old = None
        if out.exists():
            old = parent / f"{_OLD_PREFIX}{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
