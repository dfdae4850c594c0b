"""bench/run.py suites that build their artifacts: a recipe and its variants (`edgellm compress --set` overrides),
validated before any work, built into one shared work folder (stages the variants share run once) and measured
in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bench.run as bench_run
from bench.run import load_suite
from edgellm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "export" / "smoke.yaml"


def _suite(folder: Path, text: str) -> str:
    path = folder / "tiny.yaml"
    path.write_text(text)
    return str(path)


def test_every_variant_of_the_bundled_suites_applies_to_its_recipe() -> None:
    builds = {name: {v: r for v, _, r in load_suite(name).builds()}
              for name in ("minilm-students", "minilm-pruning", "minilm-int8", "minilm-embed-students")}
    students = builds["minilm-students"]
    assert [students[v].distill.num_layers for v in ("L3", "L2")] == [3, 2]
    assert all(r.prune is None and r.quantize is None and r.export.formats == ["onnx"] for r in students.values())
    pruning = builds["minilm-pruning"]
    assert pruning["unpruned"].prune is None and pruning["pruned"].prune.recovery_epochs == 0.0
    assert (pruning["recovered"].prune.heads, pruning["recovered"].prune.ffn) == (0.25, 0.4)
    assert [r.export.trim_vocab for r in pruning.values()] == [False, False, False, True]
    int8 = builds["minilm-int8"]
    assert all(r.distill is None and r.prune is None for r in int8.values())
    assert int8["unfused"].quantize.fuse is False and int8["unfused"].quantize.backends == ["onnxruntime"]
    assert [int8[f"static-{m}"].quantize.calibration_method for m in ("minmax", "entropy", "percentile")] == \
        ["minmax", "entropy", "percentile"]
    assert int8["tolerance"].quantize.tolerance == 0.5 and int8["dynamic"].quantize.fp16 is True
    embed = builds["minilm-embed-students"]
    assert {r.task for r in embed.values()} == {"feature-extraction"}
    assert [r.distill.num_layers for r in embed.values()] == [3, 2]
    assert all(r.quantize.mode == "dynamic" and r.quantize.backends == ["onnxruntime"] for r in embed.values())
    suite = load_suite("minilm-int8")
    assert suite.paths()[:2] == [ROOT / "artifacts" / "minilm-int8" / "dynamic",
                                 ROOT / "artifacts" / "minilm-int8" / "unfused"]
    assert suite.work_folder == ROOT / "artifacts" / "sentiment-minilm.work"  # make demo's: its teacher is reused
    assert load_suite("minilm-embed-students").work_folder == ROOT / "artifacts" / "minilm-embed-students.work"


@pytest.mark.parametrize("body,message", [
    # an unknown recipe key names the suite, the variant and the key
    (f"recipe: {SMOKE}\nvariants:\n  ok: []\n  bad: [quantize.fusee=false]\n",
     r"suite 'tiny', variant 'bad': smoke.yaml.quantize: unknown key 'fusee'; did you mean 'fuse'\?"),
    # a value outside the field's choices
    (f"recipe: {SMOKE}\nvariants:\n  int3: [quantize.mode=int3]\n",
     r"suite 'tiny', variant 'int3': smoke.yaml.quantize.mode = 'int3' is not one of"),
    # a bad value in the overrides every variant gets
    (f"recipe: {SMOKE}\nset: [distill.epochs=-1]\nvariants:\n  a: []\n",
     r"suite 'tiny', variant 'a': smoke.yaml.distill.epochs = -1.0 is outside"),
    # an override that is not KEY=VALUE
    (f"recipe: {SMOKE}\nvariants:\n  a: [quantize]\n", r"variant 'a': override 'quantize' is not KEY=VALUE"),
    # an unquoted flow list inside the list: not a string
    (f"recipe: {SMOKE}\nvariants:\n  a: [3]\n", r"tiny.yaml.variants.a must be a list of KEY=VALUE strings"),
    # a variant is a folder under artifacts/SUITE/
    (f"recipe: {SMOKE}\nvariants:\n  ../up: []\n", r"'../up' is not a folder name"),
    (f"recipe: {SMOKE}\nvariants: {{}}\n", "a recipe suite needs variants"),
    (f"artifact: a\nrecipe: {SMOKE}\nvariants:\n  a: []\n", "give artifact or recipe, not both"),
    ("artifact: a\nvariants:\n  a: []\n", "variants, set and work_dir describe builds of a recipe"),
    ("settings: {threads: 1}\n", "give artifact"),
    ("recipe: export/nothing.yaml\nvariants:\n  a: []\n", "variant 'a': recipe file .* does not exist"),
])
def test_bad_suite_builds_are_refused_when_loaded(body: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_suite(_suite(tmp_path, "name: tiny\n" + body))


def test_bad_variant_stops_build_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import edgellm.pipeline

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("compress ran")

    monkeypatch.setattr(edgellm.pipeline, "compress", never)
    suite = _suite(tmp_path, f"name: tiny\nrecipe: {SMOKE}\nvariants:\n  ok: []\n  bad: [distill.num_layer=2]\n")
    assert bench_run.main(["--suite", suite, "--build"]) == 1
    err = capsys.readouterr().err
    assert "ConfigError" in err and "variant 'bad'" in err and "unknown key 'num_layer'" in err
    assert bench_run.main(["--suite", "reference", "--build"]) == 1  # nothing to build: it measures make demo's
    assert "suite 'reference' has no recipe to build" in capsys.readouterr().err


@pytest.fixture(scope="module")
def built(tiny_bert_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`python -m bench.run --suite tiny --build` on the smoke recipe with a tiny teacher: variants `a` (the recipe),
    `b` (another INT8 setting: the same student and FP32 export) and `c` (a 1-layer student)."""
    tmp = tmp_path_factory.mktemp("suite")
    teacher = tiny_bert_factory(task="feature-extraction", layers=4)
    suite = _suite(tmp, f"""name: tiny
recipe: {SMOKE}
set: [teacher={teacher}, data.max_rows=200, evaluate.repeat=3, prune=null, export.trim_vocab=false,
      "export.formats=[onnx]", "quantize.backends=[onnxruntime]"]
variants:
  a: []
  b: [quantize.per_channel=false]
  c: [distill.num_layers=1]
settings: {{threads: 1, lengths: [16], batch_sizes: [4], warmup: 1, repeat: 3, throughput_repeat: 2,
           real_sample: 6, cold_runs: 0, baselines: true}}
""")
    mp = pytest.MonkeyPatch()
    mp.setattr(bench_run, "ROOT", tmp)  # artifacts/tiny/VARIANT and artifacts/tiny.work under tmp
    try:
        code = bench_run.main(["--suite", suite, "--build", "--output-dir", str(tmp / "results")])
        rebuilt: list[str] = []
        bench_run.build_suite(load_suite(suite), echo=rebuilt.append)
    finally:
        mp.undo()
    assert code == 0
    return {"tmp": tmp, "result": json.loads((tmp / "results" / "tiny.json").read_text()), "rebuilt": rebuilt}


def test_build_shares_the_teacher_stage_and_measures_every_variant(built: dict[str, Any]) -> None:
    tmp = built["tmp"]
    work = tmp / "artifacts" / "tiny.work"
    stages = sorted(p.name.split("-")[0] for p in work.iterdir() if (p / "stage.json").is_file())
    # one teacher for all three; a and b share the student and the export too
    assert stages == ["distill"] * 2 + ["evaluate"] * 3 + ["export"] * 2 + ["quantize"] * 3 + ["teacher"]
    assert sorted(p.name for p in (tmp / "artifacts" / "tiny").iterdir()) == ["a", "b", "c"]
    result = built["result"]
    assert result["artifacts"] == [str(tmp / "artifacts" / "tiny" / v) for v in "abc"]
    rows = {r["name"]: r for r in result["subjects"]}
    # b's FP32 export is a's (the same files): measured once
    assert list(rows) == ["teacher-pytorch-fp32", "student-pytorch-fp32", "c:student-pytorch-fp32", "a:onnx-fp32",
                          "a:onnx-int8", "b:onnx-int8", "c:onnx-fp32", "c:onnx-int8", "optimum-ort-int8"]
    assert rows["a:onnx-fp32"]["note"] == "same files as b:onnx-fp32"
    teacher = [p for p in work.iterdir() if p.name.startswith("teacher-")]
    assert rows["teacher-pytorch-fp32"]["path"] == str(teacher[0] / "model")  # found in the shared work folder
    assert rows["c:student-pytorch-fp32"]["path"] != rows["student-pytorch-fp32"]["path"]
    assert all(0.0 <= r["accuracy_pct"] <= 100.0 for r in rows.values())
    assert result["command"] == f"python -m bench.run --suite {tmp / 'tiny.yaml'} --build --output-dir " \
                                f"{tmp / 'results'}"


def test_rebuilding_reuses_every_finished_stage(built: dict[str, Any]) -> None:
    lines = built["rebuilt"]
    assert sum("unchanged since" in line for line in lines) == 3 * 5  # teacher, distill, export, quantize, evaluate of each
    assert not any(line.startswith("[") and "] running in" in line for line in lines)
    assert [line for line in lines if line.startswith("[tiny]")] == [
        f"[tiny] variant {v} -> {built['tmp'] / 'artifacts' / 'tiny' / v}" for v in "abc"]
