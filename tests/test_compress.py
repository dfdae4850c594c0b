"""`edgellm compress`: the smoke recipe end to end on a tiny model, stage caching, and bad recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgellm.artifact import read_manifest, verify_artifact
from edgellm.cli import cli
from edgellm.errors import ConfigError, OutputExistsError
from edgellm.pipeline import STAGE_FILE, compress, render_summary, stage_key
from edgellm.recipe import load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "export" / "smoke.yaml"
FAST = ["data.max_rows=200", "evaluate.repeat=3"]


@pytest.fixture(scope="module")
def smoke_run(tiny_bert_factory, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One CLI run of the smoke recipe on a tiny seeded teacher (4 layers, no task head)."""
    teacher = tiny_bert_factory(task="feature-extraction", layers=4)
    out = tmp_path_factory.mktemp("compress") / "smoke"
    args = ["compress", str(SMOKE), "-o", str(out), "--no-progress", "--set", f"teacher={teacher}"]
    for item in FAST:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"out": out, "teacher": teacher, "args": args, "output": result.output}


def test_smoke_recipe_runs_every_stage(smoke_run: dict) -> None:
    manifest = verify_artifact(smoke_run["out"])
    assert list(manifest.metrics) == ["teacher", "distill", "prune", "vocab", "export", "quantize", "evaluate",
                                      "summary"]
    assert [m.name for m in manifest.models] == ["onnx-fp32", "openvino-fp32", "onnx-int8", "openvino-int8"]
    assert manifest.default_model == "onnx-int8"
    assert manifest.labels == ["negative", "positive"] and manifest.max_length == 64
    assert manifest.data["split"]["sizes"] == {"train": 160, "validation": 20, "test": 20}
    assert manifest.recipe["teacher"] == str(smoke_run["teacher"])
    assert manifest.recipe["distill"]["num_layers"] == 2
    # the student has the 2 layers asked for, and pruning removed 25% of heads / FFN neurons
    assert manifest.source["num_hidden_layers"] == 2
    prune = manifest.metrics["prune"]["report"]
    assert prune["after"]["parameters"] < prune["before"]["parameters"]
    assert manifest.metrics["teacher"]["training"]["finetuned"] is True
    assert all(manifest.metrics[s]["seconds"] > 0 for s in ("teacher", "distill", "prune", "quantize", "evaluate"))
    for entry in manifest.models:
        test = entry.metrics["test"]
        assert test["examples"] == 20 and 0.0 <= test["accuracy"] <= 100.0
        assert entry.metrics["latency"]["tokens"] == 64 and entry.metrics["latency"]["p50_ms_64"] > 0
        assert entry.metrics["latency"]["threads"] == 1 and entry.metrics["latency"]["p50_ms_real"] > 0
        assert entry.metrics["latency"]["timing"] == "4 models in alternating rounds"
    summary = (smoke_run["out"] / "summary.md").read_text()
    assert summary.count("\n| ") == 1 + 4 + 4  # header + 4 torch stages + 4 artifact models
    assert "| student (distilled) | PyTorch FP32 |" in summary and "onnx-int8 (onnxruntime int8)" in summary
    assert "| stage | model | parameters | size MB | test accuracy % |" in smoke_run["output"]


def test_every_stage_has_a_finished_marker(smoke_run: dict) -> None:
    work = Path(str(smoke_run["out"]) + ".work")
    names = sorted(p.name.split("-")[0] for p in work.iterdir() if (p / STAGE_FILE).is_file())
    assert names == ["distill", "evaluate", "export", "prune", "quantize", "teacher", "vocab"]


def test_rerun_reuses_every_stage_and_gives_the_same_artifact(smoke_run: dict) -> None:
    before = read_manifest(smoke_run["out"])
    result = CliRunner().invoke(cli, smoke_run["args"] + ["--overwrite"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count("unchanged since") == 7
    after = read_manifest(smoke_run["out"])
    assert after.metrics == before.metrics
    assert {k: v["sha256"] for k, v in after.files.items()} == {k: v["sha256"] for k, v in before.files.items()}


def test_changed_stage_config_reruns_that_stage_and_later_ones(smoke_run: dict, tmp_path: Path) -> None:
    recipe = load_recipe(SMOKE, [f"teacher={smoke_run['teacher']}", *FAST, "quantize.backends=[onnxruntime]"])
    lines: list[str] = []
    result = compress(recipe, tmp_path / "art", work_dir=Path(str(smoke_run["out"]) + ".work"), progress=False,
                      echo=lines.append)
    reused = [line.split("]")[0][1:] for line in lines if "unchanged since" in line]
    ran = [line.split("]")[0][1:] for line in lines if "] running in" in line]
    assert reused == ["teacher", "distill", "prune", "vocab", "export"]
    assert ran == ["quantize", "evaluate"]
    assert [m.name for m in result.manifest.models] == ["onnx-fp32", "openvino-fp32", "onnx-int8"]


def test_prune_work_removes_only_stage_folders_this_run_did_not_use(smoke_run: dict, tmp_path: Path) -> None:
    import shutil

    work = tmp_path / "art.work"
    shutil.copytree(Path(str(smoke_run["out"]) + ".work"), work)
    stale = work / "distill-0123456789abcdef"  # an earlier recipe's stage
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "weights.bin").write_bytes(b"x" * 1000)
    leftover = work / ".export-0123456789abcdef.pruning"  # a prune interrupted before
    leftover.mkdir()
    (work / "notes.txt").write_text("mine")  # not the pipeline's: kept
    (work / "export-0123").mkdir()  # not a stage key: kept
    (work / ".quantize-0123456789abcdef").mkdir()  # a dot folder that is no prune's: kept
    lines: list[str] = []
    result = compress(load_recipe(SMOKE, [f"teacher={smoke_run['teacher']}", *FAST]), tmp_path / "art",
                      work_dir=work, progress=False, echo=lines.append, prune_work=True)
    used = {r.folder.name for r in result.stages.values()}
    assert len(used) == 7 and all((work / name / STAGE_FILE).is_file() for name in used)
    assert not stale.exists() and not leftover.exists()
    assert (work / "notes.txt").read_text() == "mine"
    assert (work / "export-0123").is_dir() and (work / ".quantize-0123456789abcdef").is_dir()
    assert {p.name for p in work.iterdir()} == used | {"notes.txt", "export-0123", ".quantize-0123456789abcdef"}
    assert sum("[prune-work] removed" in line for line in lines) == 1
    assert verify_artifact(tmp_path / "art")


def test_stage_key_depends_on_every_field() -> None:
    base = {"stage": "distill", "input": "abc", "distill": {"epochs": 1.0}}
    assert stage_key(base) == stage_key(dict(reversed(list(base.items()))))  # order does not matter
    assert stage_key(base) != stage_key({**base, "distill": {"epochs": 2.0}})
    assert stage_key(base) != stage_key({**base, "input": "abd"})


def test_render_summary_formats_missing_values() -> None:
    text = render_summary([{"stage": "teacher (fine-tuned)", "model": "PyTorch FP32", "parameters": 22_713_216,
                            "size_mb": 90.9, "metric": 86.55, "metric_name": "test accuracy %", "p50_ms": 23.3,
                            "p50_ms_real": None}])
    assert "| teacher (fine-tuned) | PyTorch FP32 | 22.71 M | 90.9 | 86.55 | 23.30 | - |" in text


# --- bad recipes ---------------------------------------------------------------------------------------------------

GOOD = {"teacher": "embedded:all-MiniLM-L6-v2", "task": "text-classification", "data": {"name": "movie-reviews"}}

# (recipe change, words in the ConfigError)
BAD_RECIPES = [
    ({"distill": {"temprature": 2.0}}, "recipe.distill: unknown key 'temprature'; did you mean 'temperature'?"),
    ({"quantise": {"mode": "dynamic"}}, "unknown key 'quantise'; did you mean 'quantize'?"),
    ({"distill": {"epochs": "three"}}, "recipe.distill.epochs must be a number, not str 'three'"),
    ({"distill": {"layers": "0,2"}}, "recipe.distill.layers must be list of int"),
    ({"prune": {"heads": 1.0}}, "recipe.prune.heads = 1.0 is outside [0.0, 1.0)"),
    ({"task": "text-classificaton"}, "did you mean 'text-classification'?"),
    ({"teacher": None}, "recipe.teacher must be a string"),
    ({"data": {}}, "need data, but the recipe has no data"),
    ({"quantize": {"mode": "int4"}}, "recipe.quantize.mode = 'int4' is not one of"),
    ({"task": "text-generation", "prune": {"recovery_alpha_hidden": 1.0}},
     "prune.recovery_alpha_hidden is for encoders"),
    ({"task": "text-generation", "causal_lm": {"int4_fallback": "best"}},
     "recipe.causal_lm.int4_fallback must be float | 'auto', not str 'best'"),
    ({"task": "text-generation", "causal_lm": {"int4_keep_8bit": ["qkv", ""]}},
     "recipe.causal_lm.int4_keep_8bit = ['qkv', '']: node-name suffixes"),
    ({"task": "text-generation", "causal_lm": {"int4_tolerance": -0.1}},
     "recipe.causal_lm.int4_tolerance = -0.1 is outside [0.0, inf]"),
    ({"task": "text-generation", "causal_lm": {"int4_sentiment_drop": -1}},
     "recipe.causal_lm.int4_sentiment_drop = -1.0 is outside [0.0, inf]"),
]


@pytest.mark.parametrize("change,words", BAD_RECIPES)
def test_bad_recipe_is_a_config_error(change: dict, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({**GOOD, **change})
    assert words in str(info.value)


def test_missing_teacher_key() -> None:
    with pytest.raises(ConfigError, match=r"recipe: missing required key\(s\) \['teacher'\]"):
        recipe_from_dict({"task": "text-classification", "data": {"name": "movie-reviews"}})


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("")
    with pytest.raises(ConfigError, match="the recipe is empty"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="override 'distill.epochs' is not KEY=VALUE"):
        load_recipe(SMOKE, ["distill.epochs"])


def test_missing_teacher_model_fails_before_work(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["compress", str(SMOKE), "-o", str(tmp_path / "a"),
                                   "--set", f"teacher={tmp_path / 'no-such-model'}", "--no-progress"])
    assert res.exit_code == 1
    assert "error (ModelError)" in res.output and "no-such-model" in res.output
    assert not (tmp_path / "a").exists()


def test_existing_output_refused_and_user_files_kept(tmp_path: Path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    recipe = load_recipe(SMOKE)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        compress(recipe, user)
    with pytest.raises(OutputExistsError, match="not an edgellm artifact"):
        compress(recipe, user, overwrite=True)
    assert (user / "notes.txt").read_text() == "keep me"


def test_unknown_target_fails_before_work(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["compress", str(SMOKE), "-o", str(tmp_path / "a"), "--target", "tpu-v9"])
    assert res.exit_code == 1 and "UnsupportedTargetError" in res.output and "tpu-v9" in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override, words", [
    ("export.vocab_texts=[amazon-review]", "recipe.export.vocab_texts[0] = 'amazon-review' is neither a built-in "
                                           "data set"),
    ("distill.augment_with=[tweets, no/such/file.csv]", "recipe.distill.augment_with[1] = 'no/such/file.csv'"),
])
def test_missing_text_source_fails_before_work(tmp_path: Path, override: str, words: str) -> None:
    res = CliRunner().invoke(cli, ["compress", str(SMOKE), "-o", str(tmp_path / "a"), "--set", override])
    assert res.exit_code == 1 and "error (ConfigError)" in res.output and words in res.output
    if "amazon-review]" in override:
        assert "did you mean 'amazon-reviews'?" in res.output
    assert list(tmp_path.iterdir()) == []


def test_recipes_in_export_folder_validate() -> None:
    for path in sorted((ROOT / "export").glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe.teacher.startswith("embedded:"), path.name
        assert json.loads(json.dumps(recipe.to_dict()))["task"] == recipe.task


def test_vocab_texts_keep_more_tokens_and_never_evaluation_text(smoke_run: dict, tmp_path: Path) -> None:
    """export.vocab_texts: the tokens of more domain text are kept too; sentences of the validation / test split in
    that text are left out (evaluation text must not choose the vocabulary)."""
    from edgellm.data import load_task_data
    from tests.conftest import tiny_vocab

    before = read_manifest(smoke_run["out"]).metrics["vocab"]["report"]
    extra = tmp_path / "domain.txt"
    words = [w for w in tiny_vocab() if w.isalpha()]
    recipe = load_recipe(SMOKE, [f"teacher={smoke_run['teacher']}", *FAST, f"export.vocab_texts=[{extra}]",
                                 "quantize=null", "export.formats=[onnx]"])
    data = load_task_data(recipe.data, task=recipe.task)
    evaluation = data.validation.texts[:3] + data.test.texts[:3]
    extra.write_text("\n".join(words + evaluation) + "\n", encoding="utf-8")
    lines: list[str] = []
    result = compress(recipe, tmp_path / "art", work_dir=Path(str(smoke_run["out"]) + ".work"), progress=False,
                      echo=lines.append)
    assert [line.split("]")[0][1:] for line in lines if "unchanged since" in line] == ["teacher", "distill", "prune"]
    after = result.manifest.metrics["vocab"]["report"]
    assert after["texts"] == before["texts"] + len(words)  # the 6 evaluation sentences were left out
    assert after["vocab_size_after"] > before["vocab_size_after"]
    assert after["held_out"]["identical_texts"] >= before["held_out"]["identical_texts"]
