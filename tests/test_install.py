"""Install profiles: the runtime-only install has no torch / transformers and runs artifacts; the openvino extra
adds the OpenVINO backend. Each builds a fresh venv from a copy of the package (about a minute, network: the
package registry only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pip(venv: Path, *args: str) -> None:
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_runtime_only_install_then_openvino_extra(tmp_path: Path, classifier_artifact: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "edgellm", src / "edgellm", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _pip(venv, str(src))
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"onnxruntime", "tokenizers", "numpy", "click"} <= names
    assert not names & {"torch", "transformers", "optimum", "openvino", "nncf"}

    edgellm = str(venv / "bin" / "edgellm")
    run = subprocess.run([edgellm, "run", "--json", str(classifier_artifact), "a great film"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)[0]["result"]["label"] in ("negative", "positive")
    no_ov = subprocess.run([edgellm, "run", "--backend", "openvino", str(classifier_artifact), "x"],
                           capture_output=True, text=True, timeout=120)
    assert no_ov.returncode == 1
    assert "pip install 'edgellm[openvino]'" in no_ov.stderr

    _pip(venv, f"{src}[openvino]")
    ov = subprocess.run([edgellm, "run", "--json", "--backend", "openvino", str(classifier_artifact), "a great film"],
                        capture_output=True, text=True, timeout=120)
    assert ov.returncode == 0, ov.stderr
    assert json.loads(ov.stdout)[0]["result"]["label"] in ("negative", "positive")
