"""Encoder export: ONNX + OpenVINO, checked against torch; errors leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgellm.artifact import read_manifest
from edgellm.errors import ConfigError, ExportMismatchError, ModelError, OutputExistsError
from edgellm.exporting import export


def test_classifier_artifact_layout(classifier_artifact: Path) -> None:
    manifest = read_manifest(classifier_artifact)
    assert manifest.task == "text-classification"
    assert manifest.labels == ["negative", "positive"]
    assert [m.name for m in manifest.models] == ["onnx-fp32", "openvino-fp32"]
    assert manifest.default_model == "onnx-fp32"
    assert manifest.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert sorted(manifest.files) == ["model.onnx", "openvino_model.bin", "openvino_model.xml", "tokenizer.json"]
    for entry in manifest.models:
        diff = entry.metrics["vs_torch"]["max_abs_diff"]
        assert 0 <= diff <= 1e-4, entry.name
        assert entry.metrics["vs_torch"]["samples"] == 24
    assert manifest.source["parameters"] > 0 and manifest.source["num_hidden_layers"] == 2


def test_onnx_has_dynamic_batch_and_sequence(classifier_artifact: Path) -> None:
    graph = onnx.load(str(classifier_artifact / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {n: ["batch", "sequence"] for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert [o.name for o in graph.output] == ["logits"]


def test_runtime_logits_match_torch(classifier_artifact: Path, tiny_classifier_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgellm.runtime import load

    texts = ["a great film", "boring and too long", "", "the plot was awful but the music was good"]
    tok = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    with torch.no_grad():
        expected = torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1).numpy()
    for backend in ("onnxruntime", "openvino"):
        got = load(classifier_artifact, backend=backend).scores(texts)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_cls_only_last_layer_same_logits_less_work(classifier_artifact: Path, tiny_classifier_dir: Path,
                                                   tmp_path: Path) -> None:
    """A BERT classifier's last layer is exported for the [CLS] position only: the same logits as the full model
    on a padded batch of uneven texts (padding never reaches position 0's answer), with fewer graph operations at
    every length; the full graph stays available (--full-graph / export.cls_only: false)."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgellm.exporting.onnx import EncoderWrapper, cls_only_supported

    full = export(tiny_classifier_dir, tmp_path / "full", task="text-classification", formats=("onnx",),
                  cls_only=False)
    short = read_manifest(classifier_artifact)
    assert short.model("onnx-fp32").metrics["cls_only_last_layer"] is True
    assert full.model("onnx-fp32").metrics["cls_only_last_layer"] is False
    tok = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    texts = ["a great film", "", "the plot was awful but the music was good " * 6, "boring"]
    enc = tok(texts, padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
        wrapped = EncoderWrapper(model, "text-classification", names, cls_only=True)(*[enc[n] for n in names])
    np.testing.assert_allclose(wrapped.numpy(), expected, atol=1e-5, rtol=0)
    feeds = {n: enc[n].numpy() for n in names}
    for folder in (classifier_artifact, tmp_path / "full"):
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, feeds)[0], expected, atol=1e-5, rtol=0)
    nodes = {f: len(onnx.load(str(f / "model.onnx")).graph.node) for f in (classifier_artifact, tmp_path / "full")}
    assert nodes[classifier_artifact] != nodes[tmp_path / "full"]
    assert cls_only_supported(model, "text-classification")
    assert not cls_only_supported(model, "feature-extraction")  # embeddings pool every position
    model.config.position_embedding_type = "relative_key"
    assert not cls_only_supported(model, "text-classification")


def test_export_mismatch_is_an_error_and_writes_nothing(tiny_classifier_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import edgellm.exporting.encoder as exporting

    real = exporting.model_runner

    def noisy(*args, **kwargs):
        run = real(*args, **kwargs)
        return lambda feeds: run(feeds) + 0.01  # an export that is off by 0.01 everywhere

    monkeypatch.setattr(exporting, "model_runner", noisy)
    out = tmp_path / "art"
    with pytest.raises(ExportMismatchError, match=r"differs from torch by max abs 0\.01") as info:
        export(tiny_classifier_dir, out, task="text-classification", formats=("onnx",))
    assert info.value.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    assert info.value.tolerance == 1e-4
    assert list(tmp_path.iterdir()) == []


def test_onnx_only_and_openvino_only(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    only_onnx = export(tiny_encoder_dir, tmp_path / "a", task="feature-extraction", formats=("onnx",))
    assert [m.name for m in only_onnx.models] == ["onnx-fp32"]
    only_ov = export(tiny_encoder_dir, tmp_path / "b", task="feature-extraction", formats=("openvino",))
    assert [m.name for m in only_ov.models] == ["openvino-fp32"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "edgellm.json", "openvino_model.bin", "openvino_model.xml", "tokenizer.json"]


# (arguments, error, words in the message)
BAD_EXPORTS = [
    (dict(task="translation"), ConfigError, "not 'translation'"),  # unknown task
    (dict(task="feature-extraction", formats=("tflite",)), ConfigError, "unknown export format(s) ['tflite']"),
    (dict(task="feature-extraction", max_length=1), ConfigError, "max_length must be an int >= 2"),
]


@pytest.mark.parametrize("kwargs,error,words", BAD_EXPORTS)
def test_bad_export_arguments(tiny_encoder_dir: Path, tmp_path: Path, kwargs, error, words) -> None:
    with pytest.raises(error) as info:
        export(tiny_encoder_dir, tmp_path / "out", **kwargs)
    assert words in str(info.value)
    assert not (tmp_path / "out").exists()


def test_model_path_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="has no config.json"):
        export(tmp_path, tmp_path / "out", task="feature-extraction")
    with pytest.raises(ModelError, match="does not exist"):
        export(tmp_path / "missing", tmp_path / "out", task="feature-extraction")


def test_export_refuses_existing_output(tiny_encoder_dir: Path, embedder_artifact: Path) -> None:
    before = (embedder_artifact / "edgellm.json").read_text()
    with pytest.raises(OutputExistsError):
        export(tiny_encoder_dir, embedder_artifact, task="feature-extraction")
    assert (embedder_artifact / "edgellm.json").read_text() == before


def test_manifest_is_plain_json_with_per_stage_metrics(embedder_artifact: Path) -> None:
    data = json.loads((embedder_artifact / "edgellm.json").read_text())
    assert data["pooling"] == "mean" and data["normalize"] is False
    assert set(data["metrics"]["export"]) == {"onnx-fp32", "openvino-fp32"}
