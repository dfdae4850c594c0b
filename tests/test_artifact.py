"""Artifact format v1: manifest validation, hashes, atomic publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgellm.artifact import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    ModelEntry,
    read_manifest,
    staging,
    verify_artifact,
    write_manifest,
)
from edgellm.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    FormatVersionError,
    IntegrityError,
    OutputExistsError,
)


MIN_ONNX = b"\x08\x07"  # a ModelProto holding only ir_version 7: well-formed protobuf, no weights


def _write_min_artifact(folder: Path) -> Manifest:
    (folder / "model.onnx").write_bytes(MIN_ONNX)
    (folder / "tokenizer.json").write_text("{}")
    manifest = Manifest(
        task="feature-extraction",
        models=[ModelEntry(name="onnx-fp32", path="model.onnx", backend="onnxruntime", precision="fp32")],
        default_model="onnx-fp32",
        pooling="mean",
    )
    return write_manifest(folder, manifest)


def test_manifest_round_trip_records_hashes_and_version(tmp_path: Path) -> None:
    written = _write_min_artifact(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert data["format"] == "edgellm-artifact"
    assert data["format_version"] == FORMAT_VERSION
    assert data["edgellm_version"] == "0.1.0"
    assert set(data["files"]) == {"model.onnx", "tokenizer.json"}
    assert data["files"]["model.onnx"]["bytes"] == len(MIN_ONNX)
    again = read_manifest(tmp_path)
    assert again.to_dict() == written.to_dict()
    assert verify_artifact(tmp_path).model().path == "model.onnx"


# (mutation of the manifest JSON, error class, words the message must contain)
BAD_MANIFESTS = [
    (lambda d: d.update(format_version=99), FormatVersionError, "format_version is 99"),  # future format
    (lambda d: d.pop("task"), ArtifactError, "'task'"),  # required key missing
    (lambda d: d.update(task="translation"), ArtifactError, "translation"),  # unknown task
    (lambda d: d.update(default_model="nope"), ArtifactError, "no model named 'nope'"),  # dangling default
    (lambda d: d.update(models=[]), ArtifactError, "lists no models"),  # nothing to run
    (lambda d: d.update(colour="blue"), ArtifactError, "unknown keys ['colour']"),  # typo'd key
    (lambda d: d["models"][0].update(backend="tensorflow"), ArtifactError, "unknown backend 'tensorflow'"),
    (lambda d: d["models"][0].update(path="../../etc/passwd", files=["../../etc/passwd"]), IntegrityError,
     "outside the artifact"),  # path traversal
    (lambda d: d["models"][0].update(path="/etc/passwd", files=["/etc/passwd"]), IntegrityError, "absolute path"),
]


@pytest.mark.parametrize("mutate,error,words", BAD_MANIFESTS)
def test_bad_manifest_raises_typed_error(tmp_path: Path, mutate, error, words) -> None:
    _write_min_artifact(tmp_path)
    path = tmp_path / MANIFEST_NAME
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(error) as info:
        read_manifest(tmp_path)
    assert words in str(info.value)


def test_missing_folder_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(ArtifactNotFoundError, match="has no edgellm.json"):
        read_manifest(tmp_path)


def test_manifest_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_changed_file_fails_hash_check(tmp_path: Path) -> None:
    _write_min_artifact(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="'model.onnx' was changed after export"):
        verify_artifact(tmp_path)


def test_deleted_file_fails_hash_check(tmp_path: Path) -> None:
    _write_min_artifact(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="'tokenizer.json' is missing"):
        verify_artifact(tmp_path)


def test_staging_publishes_atomically(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with staging(out) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".edgellm-staging-art-")
        assert not out.exists()
        _write_min_artifact(stage)
    assert read_manifest(out).task == "feature-extraction"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no staging leftovers


def test_failed_write_keeps_old_artifact_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with staging(out) as stage:
        _write_min_artifact(stage)
    before = (out / MANIFEST_NAME).read_text()
    with pytest.raises(RuntimeError, match="boom"):
        with staging(out, overwrite=True) as stage:
            (stage / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert (out / MANIFEST_NAME).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_existing_output_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with staging(out) as stage:
        _write_min_artifact(stage)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        with staging(out):
            pass


def test_user_folder_never_replaced(tmp_path: Path) -> None:
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="not an edgellm artifact"):
        with staging(user, overwrite=True):
            pass
    assert (user / "holiday.jpg").read_bytes() == b"precious"


def test_stale_staging_folder_of_dead_process_is_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / ".edgellm-staging-art-999999999-deadbeef"  # pid that cannot exist
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    with staging(tmp_path / "art") as stage:
        _write_min_artifact(stage)
    assert not stale.exists()
