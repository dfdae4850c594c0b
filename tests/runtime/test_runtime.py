"""The torch-free runtime on tiny artifacts: tasks, batching, truncation, bad inputs. One template, two backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgellm.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    BackendError,
    EdgeLLMError,
    FormatVersionError,
    InputError,
    IntegrityError,
    UnsupportedTargetError,
)
from edgellm.runtime import Classifier, Embedder, available_devices, load
from edgellm.runtime.text import MAX_TEXT_CHARS


class RuntimeTemplate:
    """Behaviour every backend must show; subclassed once per backend."""

    backend = ""

    def test_classify_returns_label_and_probability(self, classifier_artifact: Path) -> None:
        clf = load(classifier_artifact, backend=self.backend)
        assert isinstance(clf, Classifier)
        out = clf.classify(["a great film", "awful"])
        assert [set(r) for r in out] == [{"label", "score"}] * 2
        assert all(r["label"] in ("negative", "positive") and 0.5 <= r["score"] <= 1.0 for r in out)
        scores = clf.scores(["a great film", "awful"])
        assert scores.shape == (2, 2)
        np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-6)
        assert out[0]["score"] == pytest.approx(float(scores[0].max()), abs=1e-6)

    def test_top_k_ranks_every_label(self, classifier_artifact: Path) -> None:
        clf = load(classifier_artifact, backend=self.backend)
        (ranked,) = clf.classify("a great film", top_k=2)
        assert [r["label"] for r in ranked] == sorted(("negative", "positive"), key=lambda l: -next(
            x["score"] for x in ranked if x["label"] == l))
        assert ranked[0]["score"] >= ranked[1]["score"]
        with pytest.raises(InputError, match=r"top_k must be an int in \[1, 2\]"):
            clf.classify("x", top_k=3)

    def test_batched_equals_one_by_one(self, classifier_artifact: Path) -> None:
        texts = ["short", "a much longer sentence about the movie and its very slow plot", "", "ok then", "fun"] * 3
        clf = load(classifier_artifact, backend=self.backend, batch_size=4)
        together = clf.scores(texts)
        alone = np.concatenate([clf.scores([t]) for t in texts])
        np.testing.assert_allclose(together, alone, atol=1e-5)

    def test_embed_shape_and_pooling(self, embedder_artifact: Path) -> None:
        emb = load(embedder_artifact, backend=self.backend)
        assert isinstance(emb, Embedder)
        out = emb.embed(["hello", "a great film"])
        assert out.shape == (2, 32) and out.dtype == np.float32
        unit = emb.embed(["hello", "a great film"], normalize=True)
        np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(unit, out / np.linalg.norm(out, axis=1, keepdims=True), atol=1e-6)

    def test_empty_list_returns_empty(self, classifier_artifact: Path, embedder_artifact: Path) -> None:
        assert load(classifier_artifact, backend=self.backend).classify([]) == []
        empty = load(embedder_artifact, backend=self.backend).embed([])
        assert empty.shape == (0, 32)

    def test_empty_string_gets_a_result(self, classifier_artifact: Path) -> None:
        (res,) = load(classifier_artifact, backend=self.backend).classify([""])
        assert res["label"] in ("negative", "positive")

    def test_long_text_is_truncated_to_max_length(self, classifier_artifact: Path) -> None:
        clf = load(classifier_artifact, backend=self.backend)
        long_text = "the film was boring " * 25_000  # 500,000 characters
        head = " ".join(long_text.split()[:200])
        assert clf.encoder.lengths([long_text]) == [64]  # manifest max_length, special tokens included
        np.testing.assert_allclose(clf.scores([long_text]), clf.scores([head]), atol=1e-6)

    def test_non_string_item_is_refused(self, classifier_artifact: Path) -> None:
        clf = load(classifier_artifact, backend=self.backend)
        with pytest.raises(InputError, match="text 1 is a int, not a str"):
            clf.classify(["fine", 42])
        with pytest.raises(InputError, match="not bytes"):
            clf.classify(b"bytes")

    def test_too_long_text_is_refused(self, classifier_artifact: Path) -> None:
        with pytest.raises(InputError, match="the limit is 1,000,000"):
            load(classifier_artifact, backend=self.backend).classify(["x" * (MAX_TEXT_CHARS + 1)])

    def test_call_is_the_task(self, classifier_artifact: Path) -> None:
        clf = load(classifier_artifact, backend=self.backend)
        assert clf("a great film") == clf.classify("a great film")


class TestOnnxRuntime(RuntimeTemplate):
    backend = "onnxruntime"

    def test_reports_provider(self, classifier_artifact: Path) -> None:
        clf = load(classifier_artifact, backend="onnxruntime", threads=1)
        assert clf.describe()["device"] == "CPUExecutionProvider"
        assert clf.describe()["threads"] == 1


class TestOpenVINO(RuntimeTemplate):
    backend = "openvino"

    def test_precision_hint_is_explicit(self, classifier_artifact: Path) -> None:
        clf = load(classifier_artifact, backend="openvino")
        assert clf.describe()["config"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert clf.entry.inference_precision == "f32"


def test_backends_agree(classifier_artifact: Path) -> None:
    texts = ["a great film", "boring", "", "the music was good but the acting was awful"]
    a = load(classifier_artifact, backend="onnxruntime").scores(texts)
    b = load(classifier_artifact, backend="openvino").scores(texts)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_surrogates_and_control_characters(classifier_artifact: Path) -> None:
    clf = load(classifier_artifact)
    out = clf.classify(["lone \ud800 surrogate", "tab\tnew\nline\x00nul\x1b", "中文和English混合"])
    assert len(out) == 3


# (load keyword arguments, error class, words in the message)
BAD_LOADS = [
    (dict(backend="tensorflow"), UnsupportedTargetError, "unknown backend 'tensorflow'"),
    (dict(device="tpu"), UnsupportedTargetError, "unknown ONNX Runtime device 'tpu'"),
    (dict(device="cuda"), UnsupportedTargetError, "available devices: ['cpu']"),
    (dict(backend="openvino", device="npu"), UnsupportedTargetError, "available: ['CPU']"),
    (dict(model="int8"), EdgeLLMError, "no model named 'int8'"),
    (dict(threads=0), UnsupportedTargetError, "threads must be a positive int"),
    (dict(batch_size=0), InputError, "batch_size must be a positive int"),
]


@pytest.mark.parametrize("kwargs,error,words", BAD_LOADS)
def test_bad_load_options(classifier_artifact: Path, kwargs, error, words) -> None:
    with pytest.raises(error) as info:
        load(classifier_artifact, **kwargs)
    assert words in str(info.value)


def test_available_devices_lists_cpu() -> None:
    devices = available_devices()
    assert "cpu" in devices["onnxruntime"] and "cpu" in devices["openvino"]


def test_missing_folder_and_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError, match="does not exist"):
        load(tmp_path / "missing")
    with pytest.raises(ArtifactNotFoundError, match="has no edgellm.json"):
        load(tmp_path)


def test_unknown_format_version(classifier_artifact: Path, copy_artifact) -> None:
    art = copy_artifact(classifier_artifact)
    data = json.loads((art / "edgellm.json").read_text())
    data["format_version"] = 2
    (art / "edgellm.json").write_text(json.dumps(data))
    with pytest.raises(FormatVersionError, match="format_version is 2; this edgellm reads version 1"):
        load(art)


def test_model_changed_after_export(classifier_artifact: Path, copy_artifact) -> None:
    art = copy_artifact(classifier_artifact)
    with open(art / "model.onnx", "r+b") as handle:  # flip one byte in the middle of the weights
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="'model.onnx' was changed after export"):
        load(art)


def test_corrupt_model_with_matching_hash_gives_backend_error(classifier_artifact: Path, copy_artifact) -> None:
    """Garbage that is hashed into the manifest still fails as a typed error, not an ONNX Runtime traceback: the
    external-data scan reads the protobuf before any engine does and names the file."""
    from edgellm.artifact import read_manifest, write_manifest

    art = copy_artifact(classifier_artifact)
    (art / "model.onnx").write_bytes(b"\x08\x07garbage")
    write_manifest(art, read_manifest(art))
    with pytest.raises(ArtifactError, match="model.onnx is not a valid ONNX model"):
        load(art)
    (art / "model.onnx").write_bytes(b"\x08\x07")  # well-formed protobuf (ir_version 7), but no graph
    write_manifest(art, read_manifest(art))
    with pytest.raises(BackendError, match="ONNX Runtime could not load model.onnx"):
        load(art)


def test_shared_tokenizer_state_is_not_mutated(classifier_artifact: Path) -> None:
    clf = load(classifier_artifact)
    clf.classify(["one", "two words here"])
    assert clf.encoder.tokenizer.padding is None
    assert clf.encoder.tokenizer.truncation["max_length"] == 64


def test_artifact_survives_move(classifier_artifact: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "clf"
    shutil.copytree(classifier_artifact, moved)
    assert load(moved).classify("good")[0]["label"] in ("negative", "positive")
