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
import ctypes
import dataclasses
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from edgellm._faults import fault_point

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
    "ENCODER_TASKS",
    "BACKENDS",
    "PRECISIONS",
    "ModelEntry",
    "Manifest",
    "read_manifest",
    "write_manifest",
    "verify_artifact",
    "staging",
    "atomic_folder",
    "atomic_write_text",
    "check_output",
    "sha256_file",
    "is_artifact",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "edgellm.json"
TASKS = ("text-classification", "feature-extraction", "text-generation")
ENCODER_TASKS = TASKS[:2]  # the tasks of encoder models (a head or pooled vectors over a bidirectional encoder)
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
    kv_cache: dict[str, Any] | None = None  # text-generation: this model's decoder graph and KV handling over generation.kv_cache ({"graph": "fused", "shared_buffer": true})
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
    """Check every file the manifest lists against its sha256, and that every ONNX external-data reference names
    a hashed file inside the folder (`edgellm.external_data`); raise IntegrityError naming the first bad file."""
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
    from edgellm.external_data import check_external_data

    check_external_data(root, list(manifest.files), listed=manifest.files)
    return manifest


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Hash every file in `folder` (the manifest excepted) into `manifest.files`, then write `edgellm.json`."""
    from edgellm import __version__

    root = Path(folder)
    tmp = root / (MANIFEST_NAME + ".tmp")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p not in (root / MANIFEST_NAME, tmp)):
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
    tmp.write_text(text + "\n", encoding="utf-8")
    fault_point("manifest")
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _staged_name(prefix: str, name: str) -> str:
    return f"{prefix}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _owner_pid(folder: Path, prefix: str, name: str) -> int | None:
    """The pid in `<prefix><name>-<pid>-<hex>`, or None when `folder` is not such a folder of output `name`."""
    rest = folder.name[len(prefix):]
    base, _, tail = rest.rpartition("-")
    base, _, pid = base.rpartition("-")
    if base != name or not pid.isdigit() or len(tail) != 8:
        return None
    return int(pid)


def _clean_stale(parent: Path, name: str) -> None:
    """Clear what killed writers of output `name` left beside it (their process is gone).

    A staging folder is removed. A replaced (old) folder is renamed back into place when the output is missing
    (the writer died between moving the old output aside and moving the new one in), else removed.
    """
    for prefix in (_STAGING_PREFIX, _OLD_PREFIX):
        for stale in sorted(parent.glob(f"{glob.escape(prefix + name)}-*")):
            pid = _owner_pid(stale, prefix, name)
            if pid is None or (pid != os.getpid() and _pid_alive(pid)):
                continue  # another output's folder, or a live process is writing it
            if prefix == _OLD_PREFIX and not (parent / name).exists():
                log.warning("restoring %s: a killed writer left it aside as %s", parent / name, stale.name)
                os.replace(stale, parent / name)
                continue
            shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output(output: str | os.PathLike[str], *, overwrite: bool, owned: Callable[[Path], bool] = is_artifact,
                 what: str = "an edgellm artifact") -> Path:
    """Refuse an existing output unless `overwrite`; never replace a non-empty folder that `owned` does not
    recognise as written by edgellm (`what` names such a folder in the message)."""
    out = Path(output)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"output {str(out)!r} exists; pass --overwrite (overwrite=True) to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not owned(out)):
            raise OutputExistsError(
                f"output {str(out)!r} exists and is not {what}; refusing to replace it "
                "(user files are never deleted). Choose another output folder."
            )
    return out


@contextlib.contextmanager
def atomic_folder(
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    owned: Callable[[Path], bool] = is_artifact,
    what: str = "an edgellm artifact",
    durable: bool = True,
) -> Iterator[Path]:
    """Write a folder atomically: yield an empty staging folder beside `output`; publish it when the block ends.

    The one mechanism behind every folder edgellm writes (artifacts, model folders, prune outputs, caches):

    - An existing `output` is replaced only with `overwrite=True`, and only if it is empty or `owned(output)`
      says edgellm wrote it: user folders are never deleted (OutputExistsError).
    - On any exception the staging folder is removed and `output` is left untouched.
    - Publishing swaps the staging folder and the old output in one `renameat2(RENAME_EXCHANGE)` on Linux, so a
      reader sees the old folder or the new one, never a half-written one and never none. Where the exchange is
      not available the old folder is renamed aside first; a writer killed between the two renames leaves it
      aside, and the next writer of `output` renames it back.
    - `durable`: fsync every file and folder before publishing, and the parent after, so that the rename cannot
      reach the disk before the data it names.
    - Staging and replaced folders of dead processes (`kill -9`) are cleaned up by the next writer.
    """
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(parent, out.name)
    check_output(out, overwrite=overwrite, owned=owned, what=what)
    stage = parent / _staged_name(_STAGING_PREFIX, out.name)
    stage.mkdir()
    try:
        yield stage
        check_output(out, overwrite=overwrite, owned=owned, what=what)  # it may have appeared meanwhile
        if durable:
            _fsync_tree(stage)
        fault_point("staged")
        if out.exists() and _exchange(stage, out):
            shutil.rmtree(stage, ignore_errors=True)  # `stage` now holds the old folder
        else:
            old = None
            if out.exists() or out.is_symlink():
                old = parent / _staged_name(_OLD_PREFIX, out.name)
                os.replace(out, old)
            os.replace(stage, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        if durable:
            _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextlib.contextmanager
def staging(output: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Write an artifact atomically (`atomic_folder`); the block must leave a manifest in the staging folder."""
    with atomic_folder(output, overwrite=overwrite) as stage:
        yield stage
        if not is_artifact(stage):
            raise ArtifactError("internal: the staging folder was closed without a manifest")


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """Write a small text file (JSON records, markers) atomically: a temporary file beside it, then a rename.
    Temporary files that killed writers of the same file left are removed."""
    target = Path(path)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*-*.tmp"):
        pid = stale.name[len(target.name) + 2:-len(".tmp")].rpartition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before the folders holding them
        if path.is_symlink():
            continue
        if path.is_dir():
            _fsync_dir(path)
        elif path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported here (e.g. Windows): the data files were synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # this file system (or kernel) cannot exchange: fall back to two renames
    raise OSError(err, f"cannot swap {b} with its new version: {os.strerror(err)}", str(b))
