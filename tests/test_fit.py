"""`edgellm fit`: the search finds the best plan of a small space, impossible budgets give the typed "no plan meets"
result with the closest plans, an interrupted fit resumes from the cache, and bad input is a typed error.

Every fit here runs the smoke recipe on a tiny seeded teacher (4 layers, a random classification head whose
predictions depend on the text, so that plans score differently) over a space of 4 plans: 1 or 2 student layers,
with or without half the heads pruned, vocabulary trimmed, ONNX Runtime dynamic INT8, [CLS]-only last layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from edgellm.cli import cli
from edgellm.errors import ConfigError, OutputExistsError, UnsupportedTargetError
from edgellm.fit import FIT_FILES, Arm, Budget, Plan, fit, parse_space
from edgellm.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "export" / "smoke.yaml"
SPACE = ["layers=1,2", "heads=0,0.5", "ffn=0", "trim_vocab=true", "engine=onnxruntime/dynamic", "cls_only=true"]
TARGET = "cpu-x86-avx512"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tiny_bert_factory) -> Path:
    return tiny_bert_factory(task="text-classification", layers=4, init_std=0.3)


def _recipe(teacher: Path) -> Any:
    return load_recipe(SMOKE, [f"teacher={teacher}", "data.max_rows=200", "evaluate.repeat=3"])


def _fit(teacher: Path, out: Path, work: Path, lines: list[str] | None = None, **kw: Any) -> Any:
    kw.setdefault("space", SPACE)
    return fit(_recipe(teacher), target=TARGET, output=out, work_dir=work, progress=False,
               echo=(lines.append if lines is not None else None), **kw)


@pytest.fixture(scope="module")
def searched(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Successive halving (eta 2, 2 rungs: 4 plans trained half-way, the best 2 to the end) under a size budget
    that the best-scoring plan misses; then every plan trained to the end (rungs=1) in the same work folder, so
    that both runs see the same measurements."""
    root = tmp_path_factory.mktemp("fit")
    work = root / "work"
    lines: list[str] = []
    halving = _fit(teacher, root / "sh", work, lines, max_mb=0.054, eta=2, rungs=2)
    brute: list[str] = []
    every = _fit(teacher, root / "all", work, brute, max_mb=0.054, rungs=1)
    return {"root": root, "work": work, "sh": halving, "all": every, "lines": lines, "brute_lines": brute}


def _plans(result: Any) -> dict[str, dict[str, Any]]:
    return {r["plan"]: r for r in result.record["plans"]}


def test_the_search_finds_the_best_plan_of_the_space(searched: dict[str, Any]) -> None:
    sh, every = searched["sh"], searched["all"]
    assert sh.ok and every.ok
    # the known best: every plan trained and measured, the most accurate within the size budget
    measured = [r for r in _plans(every).values() if r["status"] == "measured"]
    assert len(measured) == 4
    within = [r for r in measured if r["measured"]["size_bytes"] <= 0.054e6]
    best = max(within, key=lambda r: (r["measured"]["points"], -r["measured"]["p50_ms"]))
    assert every.chosen["plan"] == best["plan"]
    assert sh.chosen["plan"] == best["plan"]
    # successive halving trained all 4 half-way and only 2 to the end
    arms = {a["arm"]: a for a in sh.record["search"]["arms"]}
    assert len(arms) == 4 and all(a["rungs"][0]["fraction"] == 0.5 for a in arms.values())
    assert sorted(len(a["rungs"]) for a in arms.values()) == [1, 1, 2, 2]
    assert len([r for r in _plans(sh).values() if r["status"] == "measured"]) == 2
    assert sh.chosen["plan"] in sh.frontier
    # a plan scoring higher was measured over the size budget, so the budget decided
    assert any(r["measured"]["points"] > best["measured"]["points"] for r in measured if r not in within)


def test_the_chosen_plan_is_measured_on_test_once_and_published(searched: dict[str, Any]) -> None:
    sh = searched["sh"]
    out = sh.output
    assert {p.name for p in out.iterdir()} == set(FIT_FILES.values())
    final = sh.chosen["final"]
    assert final["split"] == "test" and final["test"]["examples"] == 20
    assert final["p50_ms"] > 0 and final["teacher_p50_ms"] > 0
    assert final["speedup"] == pytest.approx(final["teacher_p50_ms"] / final["p50_ms"])
    assert final["judged"]["--max-mb"]["met"] is True
    from edgellm.artifact import verify_artifact

    manifest = verify_artifact(sh.artifact)
    assert manifest.default_model == "onnx-int8" and [m.name for m in manifest.models] == ["onnx-fp32", "onnx-int8"]
    # test-split numbers exist for the chosen plan's stages only: the others deferred them
    records = [json.loads(p.read_text()) for p in searched["work"].glob("*/stage.json")]
    measured_on_test = [r for r in records if r["stage"] in ("distill", "prune") and "test" in r["metrics"]]
    deferred = [r for r in records if r["stage"] in ("distill", "prune") and r.get("deferred")]
    assert measured_on_test and deferred
    assert all("test" not in r["metrics"] for r in deferred)
    # the plan is a ready recipe: it validates and names the plan's settings
    recipe = load_recipe(sh.recipe)
    plan = _plans(sh)[sh.chosen["plan"]]
    assert recipe.distill.num_layers == plan["layers"] and recipe.export.trim_vocab is True
    assert recipe.quantize.mode == "dynamic" and recipe.quantize.backends == ["onnxruntime"]
    assert recipe.quantize.preset == "avx512-vnni"
    assert (recipe.prune is None) == (plan["heads_pruned"] == 0)
    text = (out / FIT_FILES["md"]).read_text()
    assert f"**Chosen: {sh.chosen['plan']}**" in text and "Pareto frontier" in text
    assert (out / FIT_FILES["png"]).read_bytes()[:4] == b"\x89PNG"


def test_compress_of_the_chosen_recipe_reuses_every_stage(searched: dict[str, Any], tmp_path: Path) -> None:
    from edgellm.pipeline import compress

    lines: list[str] = []
    result = compress(load_recipe(searched["sh"].recipe), tmp_path / "again", work_dir=searched["work"],
                      progress=False, echo=lines.append)
    assert not [line for line in lines if "] running in" in line or "] resuming in" in line]
    assert result.manifest.default_model == "onnx-int8"


def test_the_cost_model_is_reported_against_measurements(searched: dict[str, Any]) -> None:
    record = searched["all"].record
    model = record["cost_model"]
    assert model["source"] == "timed here" and model["measured_plans"] == 4
    assert model["median_error_pct"] is not None and model["median_error_pct"] >= 0
    for r in _plans(searched["all"]).values():
        assert r["error_pct"] == pytest.approx((r["predicted"]["p50_ms"] - r["measured"]["p50_ms"])
                                               / r["measured"]["p50_ms"] * 100)
        # sizes are linear in the parameters (within 10 % here: ONNX Runtime fuses some of these tiny random
        # graphs and not others)
        assert r["predicted"]["size_bytes"] == pytest.approx(r["measured"]["size_bytes"], rel=0.1)
    table = json.loads((searched["sh"].output / FIT_FILES["table"]).read_text())
    assert table["format"] == "edgellm-latency-table" and {r["engine"] for r in table["rows"]} == {
        "onnxruntime/dynamic"}
    assert all(r["tokens"] == 64 and r["p50_ms"] > 0 for r in table["rows"])
    # every timing was taken against the teacher and is quoted at the run's reference teacher p50
    assert all(r["teacher_p50_ms"] > 0 for r in table["rows"])
    reference = record["reference"]["p50_ms"]
    for r in _plans(searched["all"]).values():
        m = r["measured"]
        assert m["p50_ms"] == pytest.approx(m["p50_timed_ms"] * reference / m["teacher_p50_ms"])


def test_the_teacher_clock_removes_the_machines_drift(monkeypatch: pytest.MonkeyPatch, teacher: Path) -> None:
    from edgellm import fit as fit_module

    clock = fit_module._TeacherClock(teacher, load_recipe(SMOKE), None, 64)
    slow = {"factor": 1.0}
    monkeypatch.setattr(clock, "_teacher_call", lambda: None)
    monkeypatch.setattr("edgellm.bench.time_interleaved", lambda calls, **kw: {
        name: {"p50_ms": (10.0 if name == "teacher" else 2.0) * slow["factor"]} for name in calls})
    assert clock.time({})[0] == 10.0 and clock.reference_ms == 10.0
    slow["factor"] = 2.5  # the machine got busier: both timings grow, the quoted one does not
    teacher_p50, timed = clock.time({"plan": lambda: None})
    assert (teacher_p50, timed["plan"]) == (25.0, 5.0)
    assert clock.at_reference(timed["plan"], teacher_p50) == pytest.approx(2.0)
    assert clock.reference_ms == 10.0
    assert clock.at_reference(3.0, None) == 3.0  # a recorded table of another device: as recorded


def test_a_size_budget_no_plan_meets_is_a_typed_result_with_the_closest_plans(
        searched: dict[str, Any], teacher: Path, tmp_path: Path) -> None:
    result = _fit(teacher, tmp_path / "none", searched["work"], max_mb=0.001)
    assert not result.ok and result.chosen is None and result.artifact is None
    assert [f["flag"] for f in result.failed] == ["--max-mb"]
    assert result.failed[0]["measured"] is False and result.failed[0]["best"] > 0.001
    assert len(result.closest) == 4 and all(c["misses"] == {"--max-mb": pytest.approx(c["size_mb"])}
                                            for c in result.closest)
    assert result.closest[0]["size_mb"] == min(c["size_mb"] for c in result.closest)
    # nothing was trained: every plan was predicted outside the budget
    assert all(r["status"] == "outside the budget (predicted)" for r in result.record["plans"])
    assert "no plan meets the budget: --max-mb 0.001" in result.message
    text = (tmp_path / "none" / FIT_FILES["md"]).read_text()
    assert "**No plan meets the budget.**" in text and not (tmp_path / "none" / FIT_FILES["artifact"]).exists()


def test_a_budget_missed_only_by_measurement_names_the_measured_closest(searched: dict[str, Any], teacher: Path,
                                                                         tmp_path: Path) -> None:
    """45 kB: the smallest plans are predicted within the 10 % margin, built, and measured just over it."""
    smallest = min(r["measured"]["size_bytes"] for r in _plans(searched["all"]).values())
    limit = smallest / 1e6 * 0.97
    result = _fit(teacher, tmp_path / "near", searched["work"], max_mb=limit, rungs=1)
    assert not result.ok
    assert result.failed[0]["flag"] == "--max-mb" and result.failed[0]["measured"] is True
    assert result.failed[0]["best"] == pytest.approx(smallest / 1e6)
    assert result.closest[0]["measured"] and result.closest[0]["size_mb"] == pytest.approx(smallest / 1e6)


def test_the_cli_reports_no_plan_as_a_typed_error(searched: dict[str, Any], teacher: Path, tmp_path: Path) -> None:
    args = ["fit", str(SMOKE), "-o", str(tmp_path / "cli"), "--target", TARGET, "--max-mb", "0.001",
            "--work-dir", str(searched["work"]), "--no-progress", "--set", f"teacher={teacher}",
            "--set", "data.max_rows=200", "--set", "evaluate.repeat=3"]
    for item in SPACE:
        args += ["--space", item]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert "error (NoPlanError): no plan meets the budget: --max-mb 0.001" in res.output
    assert "Closest plans:" in res.output and (tmp_path / "cli" / FIT_FILES["json"]).is_file()


def test_an_interrupted_fit_resumes_from_the_cache(teacher: Path, tmp_path: Path) -> None:
    """Killed after the first rung (2 plans trained half-way): the rerun reuses the teacher, the timed shapes and
    both rung scores, and continues the promoted plan from its checkpoint; a third run trains nothing."""
    space = ["layers=1,2", "heads=0", "ffn=0", "trim_vocab=true", "engine=onnxruntime/dynamic", "cls_only=true"]
    work = tmp_path / "work"

    class Interrupt(Exception):
        pass

    def stop_after_rung_one(line: str) -> None:
        if line.startswith("[fit] rung 1:"):
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(_recipe(teacher), target=TARGET, output=tmp_path / "out", work_dir=work, space=space, max_drop=100.0,
            eta=2, rungs=2, progress=False, echo=stop_after_rung_one)
    assert not (tmp_path / "out").exists()
    assert len(list((work / "fit-rungs").glob("*.json"))) == 2
    lines: list[str] = []
    first = fit(_recipe(teacher), target=TARGET, output=tmp_path / "out", work_dir=work, space=space, max_drop=100.0,
                eta=2, rungs=2, progress=False, echo=lines.append)
    assert first.ok
    assert sum("already scored" in line for line in lines) == 2
    assert [line.split("]")[0][1:] for line in lines if "] running in" in line and "[distill]" in line] == []
    assert sum(line.startswith("[distill] resuming in") for line in lines) == 1
    assert any(line.startswith("[teacher] unchanged since") for line in lines)
    assert not [line for line in lines if line.startswith("[fit-probe] running")]
    again: list[str] = []
    second = fit(_recipe(teacher), target=TARGET, output=tmp_path / "out", work_dir=work, space=space, max_drop=100.0,
                 eta=2, rungs=2, progress=False, echo=again.append, overwrite=True)
    assert second.chosen["plan"] == first.chosen["plan"]
    assert not [line for line in again if "] running in" in line or "] resuming in" in line]


def test_a_target_not_present_uses_its_recorded_table(searched: dict[str, Any], teacher: Path,
                                                      tmp_path: Path) -> None:
    """An Arm board (not this machine) with the table this machine wrote: predicted latency, nothing timed."""
    table = tmp_path / "board-table.json"
    table.write_text((searched["sh"].output / FIT_FILES["table"]).read_text())
    profile = tmp_path / "arm-board.yaml"
    profile.write_text(yaml.safe_dump({"name": "arm-board", "backend": "onnxruntime", "device": "cpu",
                                       "arch": "aarch64", "quantization": {"preset": "arm64", "mode": "dynamic"},
                                       "latency_table": table.name}))
    lines: list[str] = []
    result = fit(_recipe(teacher), target=str(profile), output=tmp_path / "board", work_dir=searched["work"],
                 space=SPACE, max_mb=0.054, eta=2, rungs=2, progress=False, echo=lines.append)
    assert result.ok and result.record["target_present"] is False
    assert result.record["cost_model"]["source"] == "the arm-board profile's table"
    assert result.record["cost_model"]["median_error_pct"] is None
    assert any("from its recorded table" in line for line in lines)
    assert not [line for line in lines if line.startswith("[fit-probe]")]
    assert load_recipe(result.recipe).quantize.preset == "arm64"
    assert not (tmp_path / "board" / FIT_FILES["table"]).exists()
    with pytest.raises(ConfigError, match="--min-speedup compares with the teacher timed on the device"):
        fit(_recipe(teacher), target=str(profile), output=tmp_path / "x", min_speedup=2.0)


# --- bad input: typed errors before any work ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, words", [
    ({"target": "tpu-v9", "max_mb": 1.0}, UnsupportedTargetError, "unknown target 'tpu-v9'"),
    ({"target": TARGET}, ConfigError, "no budget"),
    ({"target": TARGET, "max_drop": 1.0, "min_retention": 99.0}, ConfigError, "give one of them"),
    ({"target": TARGET, "max_mb": -1.0}, ConfigError, "--max-mb = -1.0"),
    ({"target": TARGET, "max_mb": 1.0, "at_length": 32}, ConfigError, "--at-length sets the input length"),
    ({"target": TARGET, "max_ms": 1.0, "at_length": 128}, ConfigError, "longer than the recipe's export.max_length 64"),
    ({"target": "cpu-arm64", "max_mb": 1.0}, UnsupportedTargetError, "records no latency_table"),
    ({"target": "intel-npu", "max_mb": 1.0}, UnsupportedTargetError, "fit searches plans for CPU targets"),
    ({"target": TARGET, "max_mb": 1.0, "eta": 1}, ConfigError, "eta = 1"),
    ({"target": TARGET, "max_mb": 1.0, "space": ["depth=2"]}, ConfigError, "AXIS one of layers"),
])
def test_bad_input_is_a_typed_error_before_any_work(kwargs: dict[str, Any], error: type, words: str,
                                                    tmp_path: Path) -> None:
    with pytest.raises(error) as info:
        fit(load_recipe(SMOKE), output=tmp_path / "out", progress=False, **kwargs)
    assert words in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_decoder_recipe_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="text-generation plans .* are not searched yet"):
        fit(load_recipe(ROOT / "export" / "lm-smollm2.yaml"), target=TARGET, output=tmp_path / "o", max_mb=100.0)


def test_an_output_that_is_not_a_fit_output_is_kept(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not an edgellm fit output"):
        fit(load_recipe(SMOKE), target=TARGET, output=mine, max_mb=1.0, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_space_and_budget_parsing() -> None:
    assert parse_space(["layers=2,3", "heads=0,0.5", "trim_vocab=true,no", "engine=openvino/static"]) == {
        "layers": [2, 3], "heads": [0.0, 0.5], "trim_vocab": [True, False], "engine": ["openvino/static"]}
    with pytest.raises(ConfigError, match="heads takes fractions"):
        parse_space(["heads=half"])
    with pytest.raises(ConfigError, match="names layers twice"):
        parse_space(["layers=2", "layers=3"])
    assert Budget(max_mb=10).objective == "accuracy" and Budget(max_drop=1).objective == "latency"
    plan = Plan(Arm(3, 0.5, 0.25), True, "openvino/static", True)
    assert plan.id == "L3-h0.5-f0.25-trim-openvino-static-cls" and plan.model_name == "openvino-int8"
    assert Plan(Arm(2), False, "onnxruntime/fp32", False).model_name == "onnx-fp32"
