"""kill -9 during every stage of `edgellm compress`, then the same command again: the artifact is the one an
uninterrupted run gives, an older artifact at the output survives every kill, and nothing is left behind.

One driver process (tests/reliability/_compress_driver.py) imports the heavy libraries once and forks a child per
run; each child runs the real CLI and SIGKILLs itself where EDGELLM_FAULT says (edgellm._faults). The killed runs
form one chain in one work folder: each rerun resumes what the previous one left, so the whole chain costs about
one pipeline run plus the work each kill throws away.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgellm.artifact import read_manifest, verify_artifact

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "export" / "smoke.yaml"
DRIVER = Path(__file__).with_name("_compress_driver.py")

# Small and deterministic: no latency (timings differ run to run); a checkpoint every 4 optimizer steps so that the
# teacher (10 steps), the student (10) and the pruning recovery (5) are each killed between two checkpoints.
SETTINGS = ["data.max_rows=200", "evaluate.latency=false", "finetune.eval_every=4", "distill.eval_every=4"]

# (EDGELLM_FAULT point, what dies there). Every stage is killed at least once, in pipeline order.
KILLS = [
    ("teacher:checkpoint", "teacher fine-tuning, after its first checkpoint"),
    ("teacher:done", "teacher finished, stage.json not yet written"),
    ("distill:checkpoint", "student distillation, after its first checkpoint"),
    ("distill:staged", "student model folder written, not yet renamed into place"),
    ("prune:checkpoint", "recovery distillation of the pruned model, after its first checkpoint"),
    ("vocab:staged", "trimmed model folder written, not yet renamed"),
    ("export:manifest", "ONNX / OpenVINO written, edgellm.json at its temporary name"),
    ("quantize:manifest", "INT8 models written, edgellm.json at its temporary name"),
    ("evaluate:done", "test metrics written, stage.json not yet"),
    ("publish:staged", "final artifact complete in its staging folder, not yet swapped in"),
    ("publish:manifest", "final artifact's edgellm.json at its temporary name"),
]

# Keys whose values are wall-clock times, or say whether a training call resumed: they differ between an
# interrupted and an uninterrupted run by design. Everything else must be equal.
VOLATILE = {"train_wall_s", "stage_wall_s", "wall_s", "seconds", "resumed_from", "created"}


class Driver:
    """The test's end of the driver's JSON-lines protocol."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.errors = open(log.with_suffix(".driver.txt"), "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errors, text=True, cwd=ROOT)
        ready = self.proc.stdout.readline()
        assert json.loads(ready) == {"ready": True}, ready

    def compress(self, args: list[str], fault: str | None = None) -> dict[str, Any]:
        env = {"EDGELLM_FAULT": fault} if fault else {}
        self.proc.stdin.write(json.dumps({"args": args, "env": env, "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"driver died; see {self.log}"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.errors.close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    d = Driver(tmp_path_factory.mktemp("driver") / "runs.log")
    yield d
    d.close()


def command(teacher: Path, out: Path) -> list[str]:
    args = ["compress", str(SMOKE), "-o", str(out), "--overwrite", "--no-progress", "--set", f"teacher={teacher}"]
    for item in SETTINGS:
        args += ["--set", item]
    return args


def normalized(value: Any, paths: dict[str, str]) -> Any:
    """`value` without VOLATILE keys, with this run's folders replaced by placeholders."""
    if isinstance(value, dict):
        return {k: normalized(v, paths) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalized(v, paths) for v in value]
    if isinstance(value, str):
        for real, name in paths.items():
            value = value.replace(real, name)
    return value


def file_hashes(folder: Path) -> dict[str, str]:
    return {rel: info["sha256"] for rel, info in read_manifest(folder).files.items()}


def leftovers(root: Path) -> list[str]:
    """Staging / replaced folders and temporary files anywhere under `root`."""
    marks = (".edgellm-staging-", ".edgellm-replaced-", ".tmp-")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.startswith(marks) or p.name.endswith(".tmp"))


@pytest.mark.slow
def test_kill_9_in_every_stage_then_rerun_gives_the_uninterrupted_artifact(
        driver: Driver, tiny_bert_factory, classifier_artifact: Path, tmp_path: Path) -> None:
    teacher = tiny_bert_factory(task="feature-extraction", layers=4)

    # the reference: one uninterrupted run
    clean = tmp_path / "clean" / "smoke"
    result = driver.compress(command(teacher, clean))
    assert result.get("exit") == 0, (result, driver.log.read_text()[-3000:])

    # the chain: an older artifact sits at the output; each run is killed at the next point
    out = tmp_path / "killed" / "smoke"
    shutil.copytree(classifier_artifact, out)
    old = file_hashes(out)
    for point, what in KILLS:
        result = driver.compress(command(teacher, out), fault=point)
        assert result.get("signal") == signal.SIGKILL, f"{point} ({what}) was never reached: {result}"
        # the old artifact, whole: nothing of the new one, nothing missing
        verify_artifact(out)
        assert file_hashes(out) == old, f"killed at {point}, the output changed"
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in classifier_artifact.iterdir())
    assert leftovers(out.parent), "the publish kills should have left a staging folder for the rerun to clear"

    result = driver.compress(command(teacher, out))
    assert result.get("exit") == 0, (result, driver.log.read_text()[-3000:])
    log = driver.log.read_text()
    assert log.count("[evaluate] unchanged since") >= 2  # the publish reruns reused every stage

    # same artifact as the uninterrupted run: metrics, model entries (files, metrics), data, recipe, file bytes
    got, want = verify_artifact(out), verify_artifact(clean)
    assert file_hashes(out) == file_hashes(clean)
    got_dict = normalized(got.to_dict(), {str(out): "OUT"})
    want_dict = normalized(want.to_dict(), {str(clean): "OUT"})
    assert got_dict["metrics"] == want_dict["metrics"]
    assert got_dict["models"] == want_dict["models"]
    assert got_dict == want_dict
    # the resumed trainings really resumed (from a checkpoint, or from their finished result)
    assert got.metrics["teacher"]["training"]["train"]["resumed_from"] is not None
    assert got.metrics["distill"]["training"]["train"]["resumed_from"] is not None

    # nothing left behind: no staging or replaced folders, no temporary files, beside the artifact or in its work
    assert leftovers(tmp_path / "killed") == []
    assert leftovers(tmp_path / "clean") == []
