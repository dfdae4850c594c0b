"""The runtime must work with torch and transformers blocked from import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys, json

class Block:
    BLOCKED = ("torch", "transformers", "optimum", "nncf", "neural_compressor", "accelerate")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
import edgellm
from edgellm.runtime import load
clf = load(sys.argv[1])
emb = edgellm.load(sys.argv[2], backend="openvino")
out = {
    "classify": clf.classify(["a great film", ""]),
    "embed_shape": list(emb.embed(["hello world"]).shape),
    "call": edgellm.load(sys.argv[1])("good")[0]["label"],
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in Block.BLOCKED),
}
from edgellm import cli  # the CLI module must import without torch too
print(json.dumps(out))
"""


def test_runtime_runs_with_torch_blocked(classifier_artifact: Path, embedder_artifact: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(classifier_artifact), str(embedder_artifact)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["classify"]) == 2 and out["classify"][0]["label"] in ("negative", "positive")
    assert out["embed_shape"] == [1, 32]
    assert out["call"] in ("negative", "positive")
    assert out["loaded"] == []


def test_cli_run_with_torch_blocked(classifier_artifact: Path) -> None:
    script = SCRIPT.split("import edgellm")[0] + (
        "from edgellm.cli import main\nsys.argv = ['edgellm', 'run', '--json', sys.argv[1], 'a great film']\nmain()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(classifier_artifact)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout)
    assert row["text"] == "a great film" and row["result"]["label"] in ("negative", "positive")
