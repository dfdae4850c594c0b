"""Nothing trusted blindly: changed files, ONNX external data that points anywhere but a hashed file inside the
artifact, and pickle in edgellm's own code."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner

from edgellm.artifact import read_manifest, write_manifest
from edgellm.cli import cli
from edgellm.errors import IntegrityError
from edgellm.external_data import check_external_data, onnx_external_data
from edgellm.runtime import load

ROOT = Path(__file__).resolve().parents[2]
DATA = "model.onnx.data"


def verify_cli(folder: Path) -> Any:
    return CliRunner().invoke(cli, ["verify", str(folder)])


def flip_byte(path: Path, at: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x01]))


# (file, byte offset from the middle) -> every file the runtime reads is covered by the hash check
@pytest.mark.parametrize("name", ["model.onnx", "openvino_model.bin", "openvino_model.xml", "tokenizer.json"])
def test_one_changed_byte_is_refused_by_load_and_by_verify(name: str, classifier_artifact: Path,
                                                          copy_artifact: Callable[[Path], Path]) -> None:
    art = copy_artifact(classifier_artifact)
    flip_byte(art / name, (art / name).stat().st_size // 2)
    words = f"artifact file {name!r} was changed after export"
    with pytest.raises(IntegrityError, match=words):
        load(art)
    with pytest.raises(IntegrityError, match=words):
        load(art, backend="openvino")
    res = verify_cli(art)
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error (IntegrityError): {words}: sha256 ")
    assert "Re-export it." in lines[0]


# --- ONNX external data -------------------------------------------------------------------------------------------

@pytest.fixture
def external_artifact(embedder_artifact: Path, tmp_path: Path) -> Path:
    """The tiny embedder with its ONNX weights moved to `model.onnx.data` (as large models are saved), hashed."""
    import onnx

    art = tmp_path / "art"
    shutil.copytree(embedder_artifact, art)
    model = onnx.load(str(art / "model.onnx"))
    onnx.save_model(model, str(art / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA, size_threshold=0)
    manifest = read_manifest(art)
    manifest.model("onnx-fp32").files = ["model.onnx", DATA]
    write_manifest(art, manifest)
    return art


def relocate(art: Path, location: str, *, rehash: bool = True) -> None:
    """Point every external tensor of model.onnx at `location`, then (as a forger would) re-hash the artifact."""
    import onnx

    model = onnx.load(str(art / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(art / "model.onnx"))
    if rehash:
        write_manifest(art, read_manifest(art))


def test_external_data_inside_and_hashed_loads(external_artifact: Path, embedder_artifact: Path) -> None:
    refs = onnx_external_data(external_artifact / "model.onnx")
    assert len(refs) >= 10 and {r.location for r in refs} == {DATA}
    assert check_external_data(external_artifact, ["model.onnx"]) == {"model.onnx": [DATA]}
    texts = ["a great film", "boring"]
    moved = load(external_artifact, backend="onnxruntime").embed(texts)
    np.testing.assert_array_equal(moved, load(embedder_artifact, backend="onnxruntime").embed(texts))
    assert verify_cli(external_artifact).exit_code == 0


def _outside_copy(art: Path) -> Path:
    """The real weights, outside the artifact: the attack works if the check is missing."""
    outside = art.parent / "elsewhere" / "weights.bin"
    outside.parent.mkdir()
    shutil.copy2(art / DATA, outside)
    return outside


# (how the location is forged, words in the IntegrityError)
FORGED = [
    ("dotdot", "which points outside the artifact folder"),  # ../elsewhere/weights.bin
    ("absolute", "an absolute path; external data must be a file inside the artifact folder"),
    ("symlink", "outside the artifact folder"),  # a hashed name inside, a link to a file outside
    ("unhashed", "a file the manifest records no sha256 for"),  # inside, but added after export
]


@pytest.mark.parametrize("how,words", FORGED, ids=[f[0] for f in FORGED])
def test_forged_external_data_location_is_refused(how: str, words: str, external_artifact: Path) -> None:
    art = external_artifact
    outside = _outside_copy(art)
    if how == "dotdot":
        relocate(art, "../elsewhere/weights.bin")
    elif how == "absolute":
        relocate(art, str(outside))
    elif how == "symlink":
        os.symlink(outside, art / "link.bin")
        relocate(art, "link.bin")
    else:
        shutil.copy2(art / DATA, art / "extra.bin")
        relocate(art, "extra.bin")
        data = json.loads((art / "edgellm.json").read_text())
        del data["files"]["extra.bin"]
        (art / "edgellm.json").write_text(json.dumps(data))
    for options in ({}, {"verify": False}, {"backend": "onnxruntime", "verify": False}):
        with pytest.raises(IntegrityError, match=words):
            load(art, **options)
    res = verify_cli(art)
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert res.output.startswith("error (IntegrityError): ") and words in res.output


def test_external_data_check_runs_even_when_hashes_are_skipped(external_artifact: Path) -> None:
    """verify=False skips the sha256 pass, not the external-data rule: a location changed after export, without
    re-hashing, is still caught before ONNX Runtime opens anything."""
    relocate(external_artifact, "../../../../../../etc/passwd", rehash=False)
    with pytest.raises(IntegrityError, match="'../../../../../../etc/passwd', which points outside"):
        load(external_artifact, verify=False)


# --- no pickle --------------------------------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def pickle_uses(source: str, filename: str = "<source>") -> list[str]:
    """Lines of `source` that import a pickle module, call torch.load without weights_only=True, call torch.save
    (a pickle writer), or np.load with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
            if names[0] in ("torch", "numpy") and any(a.name in ("load", "save") for a in node.names):
                found.append(f"{filename}:{node.lineno}: from {node.module} import load/save")
        else:
            names = []
        found += [f"{filename}:{node.lineno}: import {n}" for n in names if n in PICKLE_MODULES]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = ast.unparse(node.func.value)
        keywords = {k.arg: k.value for k in node.keywords}
        is_true = {k: isinstance(v, ast.Constant) and v.value is True for k, v in keywords.items()}
        call = f"{owner}.{node.func.attr}"
        if call == "torch.load" and not is_true.get("weights_only"):
            found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        elif call == "torch.save":
            found.append(f"{filename}:{node.lineno}: torch.save writes pickle")
        elif call in ("np.load", "numpy.load") and "allow_pickle" in keywords and not (
                isinstance(keywords["allow_pickle"], ast.Constant) and keywords["allow_pickle"].value is False):
            found.append(f"{filename}:{node.lineno}: {call} with allow_pickle")
        elif owner in PICKLE_MODULES:
            found.append(f"{filename}:{node.lineno}: {call}")
    return found


# (source, what the scan must report) - the scan itself can fail
SCAN_CASES = [
    ("import pickle", "import pickle"),
    ("import joblib as jl", "import joblib"),
    ("from dill import loads", "import dill"),
    ("import torch\ntorch.load('x.pt')", "torch.load without weights_only=True"),
    ("import torch\ntorch.load('x.pt', weights_only=False)", "torch.load without weights_only=True"),
    ("import torch\ntorch.save(m, 'x.pt')", "torch.save writes pickle"),
    ("import numpy as np\nnp.load('x.npy', allow_pickle=True)", "np.load with allow_pickle"),
    ("from torch import load", "from torch import load/save"),
]


@pytest.mark.parametrize("source,words", SCAN_CASES)
def test_the_pickle_scan_finds_each_pattern(source: str, words: str) -> None:
    found = pickle_uses(source)
    assert len(found) == 1 and words in found[0]


def test_the_pickle_scan_passes_safe_calls() -> None:
    assert pickle_uses("import torch\nimport numpy as np\ntorch.load('x', weights_only=True)\n"
                       "np.load('x.npy')\nnp.load('x.npy', allow_pickle=False)\nimport safetensors") == []


def test_no_module_of_edgellm_uses_pickle() -> None:
    files = sorted((ROOT / "edgellm").rglob("*.py"))
    assert len(files) > 40
    found = [hit for f in files for hit in pickle_uses(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert found == []
