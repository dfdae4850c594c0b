"""CLI: thin commands over the library; typed errors become one line and exit status 1."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgellm.cli import cli


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def test_run_json_classification(classifier_artifact: Path) -> None:
    res = invoke("run", "--json", str(classifier_artifact), "a great film", "")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["text"] for r in rows] == ["a great film", ""]
    assert all(r["result"]["label"] in ("negative", "positive") for r in rows)


def test_run_reads_stdin(classifier_artifact: Path) -> None:
    res = invoke("run", str(classifier_artifact), input="good\nbad\n")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert [line.split("\t")[2] for line in lines] == ["good", "bad"]


def test_run_embeddings_json(embedder_artifact: Path) -> None:
    res = invoke("run", "--json", str(embedder_artifact), "hello")
    (row,) = json.loads(res.output)
    assert len(row["embedding"]) == 32


def test_inspect_lists_models_and_hashes(classifier_artifact: Path) -> None:
    res = invoke("inspect", str(classifier_artifact))
    assert res.exit_code == 0
    assert "text-classification" in res.output and "negative, positive" in res.output
    assert "* onnx-fp32" in res.output and "openvino-fp32" in res.output and "sha256" in res.output
    full = json.loads(invoke("inspect", "--json", str(classifier_artifact)).output)
    assert full["format_version"] == 1


def test_verify_ok_and_tampered(classifier_artifact: Path, copy_artifact) -> None:
    assert "ok: 4 files match" in invoke("verify", str(classifier_artifact)).output
    art = copy_artifact(classifier_artifact)
    (art / "tokenizer.json").write_text("{}")
    res = invoke("verify", str(art))
    assert res.exit_code == 1
    assert "error (IntegrityError): artifact file 'tokenizer.json' was changed after export" in res.output


def test_errors_are_one_line_not_tracebacks(tmp_path: Path) -> None:
    res = invoke("run", str(tmp_path / "missing"), "hi")
    assert res.exit_code == 1
    assert res.output.strip() == f"error (ArtifactNotFoundError): artifact folder '{tmp_path / 'missing'}' does not exist"
    assert "Traceback" not in res.output


def test_export_command(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    res = invoke("export", str(tiny_encoder_dir), "-o", str(tmp_path / "emb"), "--task", "feature-extraction",
                 "--format", "onnx")
    assert res.exit_code == 0, res.output
    assert "onnx-fp32" in res.output and "max |diff| vs torch" in res.output
    again = invoke("export", str(tiny_encoder_dir), "-o", str(tmp_path / "emb"), "--task", "feature-extraction")
    assert again.exit_code == 1 and "OutputExistsError" in again.output


def test_export_full_graph_flag(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    from edgellm.artifact import read_manifest

    for flag, cls_only in (("--cls-only", True), ("--full-graph", False)):
        res = invoke("export", str(tiny_classifier_dir), "-o", str(tmp_path / flag), "--task", "text-classification",
                     "--format", "onnx", flag)
        assert res.exit_code == 0, res.output
        assert read_manifest(tmp_path / flag).model("onnx-fp32").metrics["cls_only_last_layer"] is cls_only
