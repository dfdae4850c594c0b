"""The external-data references of an ONNX file, read without the `onnx` package, and the artifact's rule for them.

An ONNX model may keep tensors outside its `.onnx` file: the TensorProto then holds `data_location = EXTERNAL` and
`external_data` entries (`location`, `offset`, `length`, `checksum`). A model from elsewhere could point `location`
at any file on the machine (`../../home/user/.ssh/id_rsa`, `/etc/shadow`) and have it read as weights. The
runtime-only install has no `onnx` package, so this module walks the protobuf wire format itself (a few hundred
lines of schema reduced to the fields that can hold tensors) and never decodes weights: it only skips over them.

The rule (`check_external_data`): every location is a relative path that, resolved from the model file's folder
with symlinks followed, stays inside the artifact folder and names a file the manifest lists with a sha256.
ONNX Runtime 1.32 and OpenVINO 2026.4 refuse locations outside the model file's own folder too; this check also
runs before either engine sees the file, gives one typed error, and covers files that are not hashed.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgellm.errors import ArtifactError, IntegrityError

__all__ = ["ExternalRef", "onnx_external_data", "check_external_data"]

_MAX_DEPTH = 64  # nested graphs (If / Loop bodies) deeper than this are refused, not recursed into


@dataclass(frozen=True)
class ExternalRef:
    """One tensor stored outside the ONNX file."""

    tensor: str  # the tensor's name
    location: str | None  # file path as written in the model (relative to the model file's folder); None = missing
    offset: int | None = None
    length: int | None = None


class _Malformed(Exception):
    pass


def onnx_external_data(path: str | os.PathLike[str]) -> list[ExternalRef]:
    """Every tensor of the ONNX file `path` that is stored in external data (initializers, Constant attributes,
    sparse tensors, subgraphs and functions included), in file order. Raises ArtifactError for a file that is not
    ONNX protobuf."""
    file = Path(path)
    with open(file, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise ArtifactError(f"{file.name} is empty, not an ONNX model")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            refs: list[ExternalRef] = []
            try:
                _model(buf, 0, size, refs)
            except (_Malformed, IndexError) as exc:
                raise ArtifactError(f"{file.name} is not a valid ONNX model (protobuf: {exc or 'truncated'})") from None
            except RecursionError:
                raise ArtifactError(f"{file.name} nests graphs too deeply to be checked") from None
            return refs


def check_external_data(folder: str | os.PathLike[str], files: Sequence[str],
                        listed: Any = None) -> dict[str, list[str]]:
    """Check the external-data references of the ONNX files `files` (relative to the artifact `folder`).

    Returns {onnx file: [artifact-relative paths it reads]}. Raises IntegrityError when a location is absolute,
    leaves the folder (`..`, or a symlink pointing out), or, when `listed` (the manifest's file table) is given,
    names a file without a recorded sha256; ArtifactError when a tensor is external but names no location.
    """
    root = Path(folder).resolve()
    out: dict[str, list[str]] = {}
    for rel in files:
        if not rel.endswith(".onnx"):
            continue
        model = root / rel
        if not model.is_file():
            continue  # a missing file is the hash check's to report
        needed: list[str] = []
        for ref in onnx_external_data(model):
            where = f"{rel}: tensor {ref.tensor!r} keeps its data in {ref.location!r}"
            if not ref.location:
                raise ArtifactError(f"{rel}: tensor {ref.tensor!r} is stored as external data but names no location")
            loc = ref.location
            if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
                raise IntegrityError(f"{where}, an absolute path; external data must be a file inside the artifact "
                                     "folder. The model was not written by edgellm or was tampered with.")
            target = (model.parent / loc).resolve()
            if target != root and root not in target.parents:
                raise IntegrityError(f"{where}, which points outside the artifact folder ({target}); refusing to "
                                     "load it. The model was not written by edgellm or was tampered with.")
            inside = target.relative_to(root).as_posix()
            if listed is not None and inside not in listed:
                raise IntegrityError(f"{where}, a file the manifest records no sha256 for; the artifact was changed "
                                     "after export. Re-export it.")
            if inside not in needed:
                needed.append(inside)
        out[rel] = needed
    return out


# --- protobuf wire format (https://protobuf.dev/programming-guides/encoding/) ----------------------------------------

def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint longer than 10 bytes")


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) for each field of the message in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed(f"field {number} runs past the end of its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed(f"wire type {wire} (groups are not ONNX)")
    if pos != end:
        raise _Malformed("a fixed-size field runs past the end of its message")


def _submessages(buf: Any, start: int, end: int, wanted: dict[int, Any], refs: list[ExternalRef],
                 depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise RecursionError
    for number, wire, a, b in _fields(buf, start, end):
        walk = wanted.get(number)
        if walk is not None and wire == 2:
            walk(buf, a, b, refs, depth + 1)


def _model(buf: Any, start: int, end: int, refs: list[ExternalRef]) -> None:
    # ModelProto: graph = 7, training_info = 20 (TrainingInfoProto), functions = 25 (FunctionProto)
    _submessages(buf, start, end, {7: _graph, 20: _training_info, 25: _function}, refs, 0)


def _training_info(buf: Any, start: int, end: int, refs: list[ExternalRef], depth: int) -> None:
    # TrainingInfoProto: initialization = 1, algorithm = 2 (GraphProto)
    _submessages(buf, start, end, {1: _graph, 2: _graph}, refs, depth)


def _graph(buf: Any, start: int, end: int, refs: list[ExternalRef], depth: int) -> None:
    # GraphProto: node = 1, initializer = 5 (TensorProto), sparse_initializer = 15
    _submessages(buf, start, end, {1: _node, 5: _tensor, 15: _sparse}, refs, depth)


def _function(buf: Any, start: int, end: int, refs: list[ExternalRef], depth: int) -> None:
    # FunctionProto: node = 7
    _submessages(buf, start, end, {7: _node}, refs, depth)


def _node(buf: Any, start: int, end: int, refs: list[ExternalRef], depth: int) -> None:
    # NodeProto: attribute = 5
    _submessages(buf, start, end, {5: _attribute}, refs, depth)


def _attribute(buf: Any, start: int, end: int, refs: list[ExternalRef], depth: int) -> None:
    # AttributeProto: t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22, sparse_tensors = 23
    _submessages(buf, start, end, {5: _tensor, 6: _graph, 10: _tensor, 11: _graph, 22: _sparse, 23: _sparse},
                 refs, depth)


def _sparse(buf: Any, start: int, end: int, refs: list[ExternalRef], depth: int) -> None:
    # SparseTensorProto: values = 1, indices = 2 (TensorProto)
    _submessages(buf, start, end, {1: _tensor, 2: _tensor}, refs, depth)


def _tensor(buf: Any, start: int, end: int, refs: list[ExternalRef], depth: int) -> None:
    # TensorProto: name = 8, external_data = 13 (StringStringEntryProto), data_location = 14 (1 = EXTERNAL)
    name = ""
    entries: dict[str, str] = {}
    external = False
    for number, wire, a, b in _fields(buf, start, end):
        if number == 8 and wire == 2:
            name = _text(buf, a, b)
        elif number == 13 and wire == 2:
            key = value = ""
            for n, w, x, y in _fields(buf, a, b):  # StringStringEntryProto: key = 1, value = 2
                if w == 2 and n == 1:
                    key = _text(buf, x, y)
                elif w == 2 and n == 2:
                    value = _text(buf, x, y)
            entries[key] = value
        elif number == 14 and wire == 0:
            external = a == 1
    if external or entries:
        refs.append(ExternalRef(name, entries.get("location") or None, _int(entries.get("offset")),
                                _int(entries.get("length"))))


def _text(buf: Any, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", "replace")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
