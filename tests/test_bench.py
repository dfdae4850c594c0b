"""Benchmarks on tiny models: statistics on known samples, exact-length inputs, the JSON fields and units, the
Markdown and PNG reports, cold start and peak memory, the baselines, the generation timing protocol, the CLI and
bench/run.py. Speed itself is never asserted."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytest
from click.testing import CliRunner

from edgellm.bench import (
    BenchSettings,
    CpuMonitor,
    centroid_accuracy,
    load_test_split,
    machine_info,
    measure_generation,
    measure_generation_interleaved,
    parse_cpuinfo,
    parse_proc_stat,
    percentile,
    perplexity,
    render_markdown,
    run_benchmark,
    summarize_ms,
    texts_of_length,
    time_calls,
    time_interleaved,
)
from edgellm.config import from_dict
from edgellm.errors import BackendError, ConfigError, DataError, ModelError
from tests.conftest import needs_minilm

# A few settings small enough for tiny models; the tiny tokenizer's max_length is 64.
QUICK = {"threads": 1, "lengths": [16, 32], "batch_sizes": [4], "warmup": 1, "repeat": 3, "throughput_repeat": 2,
         "real_sample": 6, "cold_runs": 0, "max_examples": 40, "baselines": False}


@pytest.fixture(scope="module")
def split() -> dict[str, Any]:
    return load_test_split(max_examples=40)


@pytest.fixture(scope="module")
def classifier_result(classifier_artifact: Path, split: dict[str, Any],
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both model entries of the tiny classifier artifact, one cold-start process each, reports written."""
    out = tmp_path_factory.mktemp("bench")
    return run_benchmark(classifier_artifact, settings={**QUICK, "cold_runs": 1}, name="tiny", output_dir=out,
                         data=split, command="edgellm bench tiny")


# ---------------------------------------------------------------------------------------------------------------
# statistics


def test_percentiles_on_known_samples() -> None:
    samples = list(range(1, 11))  # 1..10, numpy's linear interpolation: rank q/100 * (n - 1)
    assert percentile(samples, 50) == 5.5
    assert percentile(samples, 90) == pytest.approx(9.1)
    assert percentile(samples, 99) == pytest.approx(9.91)
    assert percentile(samples, 0) == 1 and percentile(samples, 100) == 10
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_summarize_ms_converts_seconds_to_milliseconds() -> None:
    stats = summarize_ms([0.004, 0.001, 0.003, 0.002])
    assert stats["p50_ms"] == pytest.approx(2.5)
    assert stats["p90_ms"] == pytest.approx(3.7)
    assert stats["mean_ms"] == pytest.approx(2.5)
    assert (stats["min_ms"], stats["max_ms"], stats["repeat"]) == (pytest.approx(1.0), pytest.approx(4.0), 4)


def test_time_calls_runs_warmup_untimed_then_repeat_timed() -> None:
    calls = []
    stats = time_calls(lambda: calls.append(1), warmup=3, repeat=7)
    assert len(calls) == 10
    assert stats["repeat"] == 7
    assert 0 <= stats["min_ms"] <= stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]


def test_time_interleaved_alternates_reverses_and_settles() -> None:
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "ab"}
    stats = time_interleaved(calls, warmup=1, repeat=4, rounds=2, settle=1, pause_s=0)
    # warm-up, then per round each name's turn: 1 untimed settle call + 2 timed; every other round reversed
    assert order == ["a", "b", "a", "a", "a", "b", "b", "b", "b", "b", "b", "a", "a", "a"]
    assert stats["a"]["repeat"] == stats["b"]["repeat"] == 4


def test_time_interleaved_keeps_ratios_on_a_drifting_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine slowing down 2% per call; b is twice as slow as a. Timed one after the other, b (timed later, on a
    slower machine) looks far slower than 2x; in alternating rounds the ratio of the medians stays near 2x."""
    import edgellm.bench.stats as stats_module

    clock = FakeClock()
    monkeypatch.setattr(stats_module.time, "perf_counter", clock)
    done = [0]

    def call(cost: float) -> Any:
        def run() -> None:
            done[0] += 1
            clock.now += cost * 1.02 ** done[0]
        return run

    fns = {"a": call(0.001), "b": call(0.002)}
    rounds = time_interleaved(fns, warmup=0, repeat=40, rounds=10, settle=0, pause_s=0)
    assert rounds["b"]["p50_ms"] / rounds["a"]["p50_ms"] == pytest.approx(2.0, rel=0.05)
    apart = {name: time_calls(fn, warmup=0, repeat=40) for name, fn in fns.items()}
    assert apart["b"]["p50_ms"] / apart["a"]["p50_ms"] > 4  # drift more than doubled the ratio


# ---------------------------------------------------------------------------------------------------------------
# machine facts


@pytest.mark.parametrize(
    ("text", "model", "flags"),
    [
        # x86: model name + flags; only the INT8-relevant flags are kept, in a fixed order
        ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6338\nflags\t\t: fpu avx2 avx512f avx512_vnni sse\n",
         "Intel(R) Xeon(R) Gold 6338", ["avx2", "avx512f", "avx512_vnni"]),
        # Arm (Raspberry Pi style): Features and Model
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n",
         "Raspberry Pi 5 Model B Rev 1.0", ["asimd", "asimddp"]),
        # two processors: the first model name wins
        ("model name : A\nflags : avx2\n\nmodel name : B\nflags : avx512f\n", "A", ["avx2"]),
        # nothing known
        ("", "", []),
    ],
)
def test_parse_cpuinfo(text: str, model: str, flags: list[str]) -> None:
    assert parse_cpuinfo(text) == (model, flags)


def test_machine_info_records_cpu_cores_and_versions() -> None:
    info = machine_info()
    assert info["cpu_model"] and info["cpu_model"] != "x86_64"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        assert (info["cpu_model"], info["cpu_flags"]) == parse_cpuinfo(cpuinfo.read_text())
    assert info["cpu_count"] >= 1
    assert {"numpy", "onnxruntime", "tokenizers"} <= set(info["versions"])


def test_parse_proc_stat() -> None:
    text = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\nintr 123\n"
    # busy = user + nice + system + irq + softirq; idle = idle + iowait; steal on its own
    assert parse_proc_stat(text) == {"busy": 160, "idle": 1020, "steal": 7}
    assert parse_proc_stat("intr 1\n") is None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux /proc/stat only")
def test_cpu_monitor_reports_other_load() -> None:
    with CpuMonitor() as monitor:
        sum(range(200_000))  # this process's own work is not "other" load
    assert set(monitor.result) == {"other_cores", "steal_cores", "wall_s"}
    assert monitor.result["other_cores"] >= 0 and monitor.result["wall_s"] > 0


def test_live_descendants_cpu_s_follows_parents_in_a_proc_tree(tmp_path: Path) -> None:
    from edgellm.bench.machine import live_descendants_cpu_s

    tick = os.sysconf("SC_CLK_TCK")

    def proc(pid: int, ppid: int, comm: str, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> None:
        (tmp_path / str(pid)).mkdir()
        rest = [ppid, 1, 1, 0, -1, 0, 0, 0, 0, 0, utime, stime, cutime, cstime, 20, 0, 1]
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) S " + " ".join(map(str, rest)) + "\n")

    proc(10, 1, "bench", 500, 500)  # this process: RUSAGE_SELF counts it, not this function
    proc(11, 10, "peer (llama.cpp) 2", 3 * tick, tick)  # a comm with spaces and parentheses
    proc(12, 11, "helper", tick, 0, 2 * tick, 0)  # a grandchild, with a waited-for child of its own
    proc(13, 1, "other", 9 * tick, 9 * tick)  # another process's work
    proc(14, 13, "other child", tick, tick)
    (tmp_path / "self").mkdir()
    (tmp_path / "15").mkdir()  # a process that ended while /proc was read: no stat file
    assert live_descendants_cpu_s(tmp_path, 10) == pytest.approx(4 + 3)
    assert live_descendants_cpu_s(tmp_path, 12) == 0.0


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux /proc/stat only")
def test_cpu_monitor_counts_a_live_child_as_its_own_work() -> None:
    from edgellm.bench.machine import live_descendants_cpu_s

    code = ("import sys, time\nwhile time.process_time() < 0.3: pass\nprint('ready', flush=True)\n"
            "sys.stdin.readline()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert live_descendants_cpu_s(Path("/proc"), os.getpid()) >= 0.29  # it has used 0.3 s and still runs
    finally:
        child.communicate("\n", timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# inputs and metrics


def test_texts_of_length_are_exact_distinct_and_real(classifier_artifact: Path, split: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(classifier_artifact / "tokenizer.json"))
    tok.no_truncation()
    for length in (8, 16, 33, 64):
        texts = texts_of_length(tok, split["texts"], length, 6)
        assert [len(tok.encode(t).ids) for t in texts] == [length] * 6
        assert len(set(texts)) == 6
        corpus = " ".join(split["texts"] * 2)
        assert all(t.split()[0] in corpus for t in texts)


@needs_minilm
def test_texts_of_length_with_the_minilm_tokenizer(split: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    from edgellm.models import resolve_model

    tok = Tokenizer.from_file(str(Path(resolve_model("embedded:all-MiniLM-L6-v2")) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()  # the shipped file pads to 128
    for length in (32, 128):
        texts = texts_of_length(tok, split["texts"], length, 32)
        assert {len(tok.encode(t).ids) for t in texts} == {length}
        assert len(set(texts)) == 32


def test_texts_of_length_repeats_a_short_source(classifier_artifact: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(classifier_artifact / "tokenizer.json"))
    texts = texts_of_length(tok, ["a good film."], 32, 3)  # one short sentence, repeated until 32 tokens
    assert texts == [texts[0]] * 3 and texts[0].startswith("a good film. a good film.")
    assert len(tok.encode(texts[0]).ids) == 32


def test_texts_of_length_bad_inputs(classifier_artifact: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(classifier_artifact / "tokenizer.json"))
    with pytest.raises(ConfigError, match="length 2 leaves no room for text after 2 special tokens"):
        texts_of_length(tok, ["a good film"], 2, 1)
    with pytest.raises(DataError, match="no source sentences"):
        texts_of_length(tok, ["", "   "], 16, 1)


def test_centroid_accuracy_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(30, 5))
    labels = rng.integers(0, 3, size=30)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    hits = 0
    for i in range(30):
        sims = []
        for c in range(3):
            members = [j for j in range(30) if labels[j] == c and j != i]
            centroid = unit[members].sum(0)
            sims.append(unit[i] @ centroid / np.linalg.norm(centroid))
        hits += int(np.argmax(sims) == labels[i])
    assert centroid_accuracy(vectors, labels) == pytest.approx(100.0 * hits / 30)
    # two well separated clusters: every point is closest to its own class
    blobs = np.concatenate([rng.normal(5, 0.1, (10, 4)), rng.normal(-5, 0.1, (10, 4))])
    assert centroid_accuracy(blobs, [0] * 10 + [1] * 10) == 100.0
    with pytest.raises(DataError, match="needs"):
        centroid_accuracy(np.zeros((3, 2)), [0, 1])


def test_test_split_is_seeded_binary_and_capped() -> None:
    a, b = load_test_split(max_examples=25), load_test_split(max_examples=25)
    assert a["texts"] == b["texts"] and len(a["texts"]) == 25
    assert set(a["labels"]) <= {0, 1} and a["label_names"] == ["negative", "positive"]
    assert a["info"]["examples"] == 25 and a["info"]["corpus"] == "movie-reviews"


def test_test_split_follows_the_artifacts_record() -> None:
    from types import SimpleNamespace

    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig, SplitConfig

    record = load_task_data(DataConfig(name="movie-reviews", split=SplitConfig(seed=7, test=0.2)),
                            task="text-classification").describe()
    manifest = SimpleNamespace(task="text-classification", recipe=None, data=record)
    got = load_test_split(manifest)
    assert got["info"]["config_from"] == "the artifact's data record"
    assert (got["info"]["seed"], got["info"]["test_fraction"], got["info"]["matches_manifest"]) == (7, 0.2, True)
    assert len(got["texts"]) == record["split"]["sizes"]["test"]
    # a record that differs from what the data gives now is reported, not hidden
    record["split"]["sha256"]["test"] = "0" * 64
    assert load_test_split(manifest, max_examples=5)["info"]["matches_manifest"] is False
    # the recipe's data section wins over the record
    manifest = SimpleNamespace(task="text-classification", recipe={"data": {"name": "movie-reviews",
                                                                            "split": {"seed": 5}}}, data=None)
    assert load_test_split(manifest, max_examples=5)["info"]["seed"] == 5
    assert load_test_split(None, max_examples=5)["info"]["config_from"] == "default (movie-reviews)"


def test_heldout_text_of_a_causal_lm_recipe_is_its_merged_corpora() -> None:
    from types import SimpleNamespace

    from edgellm.bench import load_heldout_texts
    from edgellm.recipe import DataConfig, SplitConfig
    from edgellm.train.causal import load_lm_data

    split = {"seed": 13, "validation": 0.05, "test": 0.05}
    recipe = {"data": {"split": split}, "causal_lm": {"corpora": ["movie-reviews", "tweets"]}}
    expected = load_lm_data(DataConfig(split=SplitConfig(**split)), corpora=["movie-reviews", "tweets"]).test
    record = {"split": {"sha256": {"test": expected.sha256()}}}
    got = load_heldout_texts(SimpleNamespace(task="text-generation", recipe=recipe, data=record), max_texts=7)
    assert got["info"]["corpus"] == "movie-reviews+tweets" and got["info"]["matches_manifest"] is True
    assert got["info"]["rows"] == len(expected) and len(got["texts"]) == 7
    assert set(got["texts"]) <= set(expected.texts)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lengths": [2]}, r"settings.lengths\[0\] = 2 is outside \[4, inf\]"),
        ({"lengths": []}, "settings.lengths is empty"),
        ({"repeat": 0}, r"settings.repeat = 0 is outside \[1, inf\]"),
        ({"threads": 0}, r"settings.threads = 0 is outside \[1, inf\]"),
        ({"cold_runs": -1}, r"settings.cold_runs = -1 is outside"),
        ({"rounds": 0}, r"settings.rounds = 0 is outside \[1, inf\]"),
        ({"repeats": 5}, "unknown key 'repeats'; did you mean 'repeat'"),  # a typo gets a suggestion
        ({"lengths": "32,128"}, "settings.lengths must be list of int"),
    ],
)
def test_bad_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(BenchSettings, settings, "settings")


# ---------------------------------------------------------------------------------------------------------------
# the encoder benchmark


def test_result_json_fields_and_units(classifier_result: dict[str, Any], classifier_artifact: Path) -> None:
    saved = json.loads(Path(classifier_result["paths"]["json"]).read_text())
    assert saved["schema"] == "edgellm-bench/1" and saved["task"] == "text-classification"
    assert saved["settings"]["threads"] == 1 and saved["settings"]["lengths"] == [16, 32]
    assert saved["machine"]["cpu_model"] and "versions" in saved["machine"]
    assert saved["data"]["examples"] == 40 and saved["command"] == "edgellm bench tiny"
    assert [s["name"] for s in saved["subjects"]] == ["onnx-fp32", "openvino-fp32"]
    manifest = json.loads((classifier_artifact / "edgellm.json").read_text())
    for row, entry in zip(saved["subjects"], manifest["models"]):
        assert row["kind"] == "edgellm" and row["backend"] == entry["backend"] and row["threads"] == 1
        assert row["size_bytes"] == sum(manifest["files"][f]["bytes"] for f in entry["files"])
        assert row["size_mb"] == pytest.approx(row["size_bytes"] / 1e6)
        assert set(row["latency"]) == {"16", "32", "real"}
        for stats in row["latency"].values():
            assert set(stats) >= {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "repeat"}
            assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert row["latency"]["16"]["repeat"] == 3 and row["latency"]["real"]["repeat"] == 6
        assert 1 <= row["latency"]["real"]["tokens_mean"] <= row["latency"]["real"]["tokens_max"] <= 64
        batch = row["throughput"]["4"]["32"]
        assert batch["texts_per_s"] == pytest.approx(4 / (batch["p50_ms"] / 1e3)) and batch["repeat"] == 2
        assert 0 <= row["accuracy_pct"] <= 100 and row["examples"] == 40
        # cold start (process start to first result) and the peak RSS of that process
        assert row["cold_start_s"] > 0 and len(row["cold_start_runs_s"]) == 1
        assert row["peak_rss_mb"] > 10 and row["peak_rss_bytes"] == pytest.approx(row["peak_rss_mb"] * 1e6)
        assert row["peak_rss_at_first_result_mb"] <= row["peak_rss_mb"]
        assert "vs_teacher" not in row  # no baselines in this run
        assert row["contention"]["other_cores"] >= 0 and row["contention"]["wall_s"] > 0
    # the fixed-length latencies (the ratios' source) of both models were timed in the same alternating rounds
    timing = saved["timing"]
    assert (timing["mode"], timing["models"], timing["rounds"], timing["settle_calls"]) == ("interleaved", 2, 3, 2)
    assert timing["pause_s"] == 0.1
    assert timing["contention"]["wall_s"] > 0


def test_accuracy_is_the_runtime_accuracy_on_the_split(classifier_result: dict[str, Any], classifier_artifact: Path,
                                                        split: dict[str, Any]) -> None:
    from edgellm.evaluate import evaluate_classifier
    from edgellm.runtime import load

    for row in classifier_result["subjects"]:
        expected = evaluate_classifier(load(classifier_artifact, model=row["model"]), split["texts"], split["labels"])
        assert row["accuracy_pct"] == expected["accuracy"]
        assert row["macro_f1_pct"] == expected["macro_f1"]


def test_markdown_report(classifier_result: dict[str, Any]) -> None:
    md = Path(classifier_result["paths"]["md"]).read_text()
    assert md == render_markdown(classifier_result)
    assert md.startswith("### tiny: text-classification\n")
    lines = md.splitlines()
    onnx = next(line for line in lines if line.startswith("| export | onnx-fp32 |"))
    row = classifier_result["subjects"][0]
    assert f"| {row['accuracy_pct']:.2f} | {row['latency']['32']['p50_ms']:.2f} |" in onnx
    assert f"| {row['cold_start_s']:.2f} |" in onnx
    assert "| model | 16 tokens | 32 tokens | real |" in lines and "| model | 4 × 16 | 4 × 32 |" in lines
    assert "Reproduce: `edgellm bench tiny`" in md
    assert "Other processes used on average" in md and "and during the alternating rounds" in md
    assert "fixed length (the × columns' source) of all 2 models timed in the same 3 alternating rounds" in md
    assert "each turn opened by a 0.1 s pause and 2 untimed calls" in md


def test_interleave_off_times_one_model_after_another(classifier_artifact: Path, split: dict[str, Any],
                                                     tmp_path: Path) -> None:
    result = run_benchmark(classifier_artifact, settings={**QUICK, "interleave": False, "real_sample": 0,
                                                          "batch_sizes": []},
                           name="apart", output_dir=tmp_path, data=split)
    assert result["timing"] == {"mode": "sequential"}
    for row in result["subjects"]:
        assert set(row["latency"]) == {"16", "32"} and row["latency"]["32"]["repeat"] == 3
    md = Path(result["paths"]["md"]).read_text()
    assert "timed one model after another (interleave off, or a single model)" in md
    assert "alternating rounds" not in md


def test_too_little_memory_for_every_model_at_once_times_them_one_after_another(
        classifier_artifact: Path, split: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgellm.bench.benchmark.available_memory_bytes", lambda: 1000)
    result = run_benchmark(classifier_artifact, settings={**QUICK, "real_sample": 0, "batch_sizes": []},
                           name="low-memory", output_dir=tmp_path, data=split)
    timing = result["timing"]
    assert timing["mode"] == "sequential"
    assert re.fullmatch(r"all 2 models loaded at once would take about [0-9.]+ GB \(2x their files\), 0\.0 GB "
                        r"available", timing["reason"])
    assert all(row["latency"]["32"]["repeat"] == 3 for row in result["subjects"])
    assert f"timed one model after another ({timing['reason']})" in Path(result["paths"]["md"]).read_text()


def _png_chunks(data: bytes) -> dict[bytes, bytes]:
    chunks, pos = {}, 8
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        (crc,) = struct.unpack(">I", data[pos + 8 + size : pos + 12 + size])
        assert crc == zlib.crc32(kind + body), kind  # every chunk intact
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        pos += 12 + size
    return chunks


def test_plot_is_a_valid_non_trivial_png(classifier_result: dict[str, Any]) -> None:
    data = Path(classifier_result["paths"]["png"]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = _png_chunks(data)
    assert {b"IHDR", b"IDAT", b"IEND"} <= set(chunks)
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert (width, height) == (960, 600)  # 8 x 5 inches at 120 dpi
    assert b"matplotlib" in chunks.get(b"tEXt", b"")
    pixels = zlib.decompress(chunks[b"IDAT"])
    assert len(set(pixels[:: 97])) > 20  # axes, text and markers, not a blank canvas
    assert len(data) > 20_000


def test_baselines_teacher_pytorch_and_optimum(classifier_artifact: Path, tiny_classifier_dir: Path,
                                               split: dict[str, Any]) -> None:
    result = run_benchmark(classifier_artifact, models=["onnx-fp32"], teacher=str(tiny_classifier_dir),
                           settings={**QUICK, "baselines": True, "lengths": [32], "real_sample": 0},
                           output_dir=None, data=split)
    rows = {r["name"]: r for r in result["subjects"]}
    assert list(rows) == ["teacher-pytorch-fp32", "onnx-fp32", "optimum-ort-int8"]
    teacher, onnx, optimum = rows.values()
    assert (teacher["kind"], teacher["backend"], teacher["precision"], teacher["stage"]) == \
        ("pytorch", "pytorch", "fp32", "teacher")
    assert teacher["size_bytes"] == (tiny_classifier_dir / "model.safetensors").stat().st_size
    assert (optimum["kind"], optimum["precision"], optimum["model"]) == ("optimum", "int8", "model_quantized.onnx")
    assert "ORTQuantizer avx512_vnni dynamic" in optimum["engine"] and optimum["size_bytes"] > 0
    # the FP32 export predicts what the FP32 teacher predicts
    assert onnx["accuracy_pct"] == teacher["accuracy_pct"]
    for row in rows.values():
        p50 = row["latency"]["32"]["p50_ms"]
        assert row["vs_teacher"]["p50_speedup"] == pytest.approx(teacher["latency"]["32"]["p50_ms"] / p50)
        assert row["vs_teacher"]["size_ratio"] == pytest.approx(teacher["size_bytes"] / row["size_bytes"])
        assert row["vs_optimum"]["p50_speedup"] == pytest.approx(optimum["latency"]["32"]["p50_ms"] / p50)
        assert "cold_start_s" not in row  # cold_runs = 0
    assert teacher["vs_teacher"]["accuracy_retained_pct"] == pytest.approx(100.0)


def test_pipeline_stages_from_the_work_folder(classifier_artifact: Path, tiny_classifier_dir: Path,
                                             tiny_bert_factory: Any, split: dict[str, Any], tmp_path: Path) -> None:
    """A compressed artifact's fine-tuned teacher and intermediate models are found in `<artifact>.work/`."""
    import shutil

    from edgellm.artifact import read_manifest, write_manifest

    art = tmp_path / "sentiment"
    shutil.copytree(classifier_artifact, art)
    manifest = read_manifest(art)
    manifest.metrics.update({"teacher": {"key": "t1"}, "distill": {"key": "d1"}, "prune": {"key": "gone"}})
    write_manifest(art, manifest)
    student = tiny_bert_factory(task="text-classification", layers=1, seed=3)
    shutil.copytree(tiny_classifier_dir, tmp_path / "sentiment.work" / "teacher-t1" / "model")
    shutil.copytree(student, tmp_path / "sentiment.work" / "distill-d1" / "model")
    result = run_benchmark(art, models=["onnx-fp32"], settings={**QUICK, "baselines": True, "lengths": [16],
                                                                 "real_sample": 0, "batch_sizes": []},
                           output_dir=None, data=split)
    rows = {r["name"]: r for r in result["subjects"]}
    assert list(rows) == ["teacher-pytorch-fp32", "student-pytorch-fp32", "onnx-fp32", "optimum-ort-int8"]
    assert rows["teacher-pytorch-fp32"]["path"] == str(tmp_path / "sentiment.work" / "teacher-t1" / "model")
    assert rows["student-pytorch-fp32"]["stage"] == "student"  # prune-gone/ does not exist: no pruned row
    assert rows["student-pytorch-fp32"]["size_bytes"] == (student / "model.safetensors").stat().st_size
    assert rows["onnx-fp32"]["vs_teacher"]["p50_speedup"] == pytest.approx(
        rows["teacher-pytorch-fp32"]["latency"]["16"]["p50_ms"] / rows["onnx-fp32"]["latency"]["16"]["p50_ms"])
    no_stages = run_benchmark(art, models=["onnx-fp32"], settings={**QUICK, "stages": False, "lengths": [16],
                                                                    "real_sample": 0, "batch_sizes": []},
                              output_dir=None, data=split)
    assert [r["name"] for r in no_stages["subjects"]] == ["onnx-fp32"]


def test_embedder_agreement_with_the_teacher(embedder_artifact: Path, tiny_encoder_dir: Path,
                                             split: dict[str, Any]) -> None:
    result = run_benchmark(embedder_artifact, teacher=str(tiny_encoder_dir),
                           settings={**QUICK, "baselines": True, "lengths": [16], "batch_sizes": [],
                                     "real_sample": 0}, output_dir=None, data=split)
    rows = {r["name"]: r for r in result["subjects"]}
    assert list(rows) == ["teacher-pytorch-fp32", "onnx-fp32", "openvino-fp32", "optimum-ort-int8"]
    for name in ("onnx-fp32", "openvino-fp32"):
        assert rows[name]["agreement"]["reference"] == "teacher-pytorch-fp32"
        assert rows[name]["agreement"]["mean_cosine_to_reference"] > 0.99999
        assert rows[name]["accuracy_pct"] == pytest.approx(rows["teacher-pytorch-fp32"]["accuracy_pct"])
    assert rows["teacher-pytorch-fp32"]["agreement"]["mean_cosine_to_reference"] == pytest.approx(1.0)
    assert rows["optimum-ort-int8"]["agreement"]["mean_cosine_to_reference"] < 0.99999  # INT8 moves embeddings
    assert "nearest class centroid" in rows["onnx-fp32"]["accuracy_metric"]


def test_bad_benchmark_requests(classifier_artifact: Path, embedder_artifact: Path, tiny_encoder_dir: Path,
                                split: dict[str, Any], tmp_path: Path) -> None:
    run = dict(output_dir=None, data=split)
    with pytest.raises(ConfigError, match=r"length\(s\) \[128\] exceed onnx-fp32's max_length of 64 tokens"):
        run_benchmark(classifier_artifact, settings={**QUICK, "lengths": [32, 128]}, **run)
    with pytest.raises(ModelError, match="has no sequence-classification head"):
        run_benchmark(classifier_artifact, teacher=str(tiny_encoder_dir), settings={**QUICK, "baselines": True}, **run)
    with pytest.raises(ConfigError, match="tasks differ"):
        run_benchmark(classifier_artifact, compare=[embedder_artifact], settings=QUICK, **run)
    with pytest.raises(ConfigError, match="result name '../x' must be a plain file name"):
        run_benchmark(classifier_artifact, settings=QUICK, name="../x", output_dir=tmp_path, data=split)
    with pytest.raises(Exception, match="has no model named 'int8'"):
        run_benchmark(classifier_artifact, models=["int8"], settings=QUICK, **run)


# ---------------------------------------------------------------------------------------------------------------
# generation protocol (a fake clock makes every number exact)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fake_stream(clock: FakeClock, *, per_prompt_token: float, per_token: float, stop_after: int | None = None):
    def stream(prompt: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        clock.now += per_prompt_token * len(prompt)  # prefill
        for i in range(min(max_new_tokens, stop_after or max_new_tokens)):
            if i:
                clock.now += per_token  # one decode step
            yield 1000 + i

    return stream


def test_measure_generation_on_a_fake_clock() -> None:
    clock = FakeClock()
    stream = fake_stream(clock, per_prompt_token=0.001, per_token=0.02)
    stats = measure_generation(stream, list(range(128)), max_new_tokens=11, warmup=1, repeat=3, clock=clock)
    assert stats["prompt_tokens"] == 128 and stats["new_tokens"] == 11
    assert stats["time_to_first_token_ms"] == pytest.approx(128.0)
    assert stats["prompt_tokens_per_s"] == pytest.approx(1000.0)
    assert stats["decode_tokens_per_s"] == pytest.approx(50.0)  # 10 tokens after the first in 0.2 s
    assert stats["time_to_first_token"]["repeat"] == 3


def test_measure_generation_counts_an_early_stop_and_refuses_bad_input() -> None:
    clock = FakeClock()
    stats = measure_generation(fake_stream(clock, per_prompt_token=0.0, per_token=0.01, stop_after=5), [1, 2],
                               max_new_tokens=64, warmup=0, repeat=1, clock=clock)
    assert stats["new_tokens"] == 5 and stats["decode_tokens_per_s"] == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="max_new_tokens must be >= 2"):
        measure_generation(fake_stream(clock, per_prompt_token=0, per_token=0), [1], max_new_tokens=1)
    with pytest.raises(ConfigError, match="the prompt is empty"):
        measure_generation(fake_stream(clock, per_prompt_token=0, per_token=0), [], max_new_tokens=4)
    with pytest.raises(BackendError, match="produced no token"):
        measure_generation(lambda p, n: iter(()), [1], max_new_tokens=4, warmup=0)


def test_interleaved_generation_keeps_ratios_on_a_drifting_machine() -> None:
    """A machine slowing down 10% per generation: B decodes 2x as fast as A. Measured one model after the other,
    B (timed later, on a slower machine) looks only 1.24x as fast; timed in alternating rounds, the ratio of their
    medians stays near 2x."""
    clock = FakeClock()
    order: list[str] = []

    def drifting(name: str, per_token: float) -> Any:
        def stream(prompt: Sequence[int], max_new_tokens: int) -> Iterator[int]:
            order.append(name)
            slow = 1.1 ** len(order)
            for i in range(max_new_tokens):
                if i:
                    clock.now += per_token * slow
                yield i
        return stream

    streams = {"a": drifting("a", 0.02), "b": drifting("b", 0.01)}
    got = measure_generation_interleaved(streams, [1, 2, 3], max_new_tokens=9, warmup=1, repeat=4, clock=clock,
                                         pause_s=0)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then every other round reversed
    ratio = got["b"]["decode_tokens_per_s"] / got["a"]["decode_tokens_per_s"]
    assert ratio == pytest.approx(2.0, rel=0.06) and got["a"]["repeat"] == 4
    order.clear()
    apart = {name: measure_generation(s, [1, 2, 3], max_new_tokens=9, warmup=1, repeat=4, clock=clock)
             for name, s in streams.items()}
    assert apart["b"]["decode_tokens_per_s"] / apart["a"]["decode_tokens_per_s"] < 1.5  # drift hid the 2x
    with pytest.raises(ConfigError, match="max_new_tokens must be >= 2"):
        measure_generation_interleaved(streams, [1], max_new_tokens=1)


def test_perplexity_on_known_distributions() -> None:
    vocab = 50
    uniform = perplexity(lambda ids: np.full(len(ids) - 1, -np.log(vocab)), [[1, 2, 3], [4, 5], [6]])
    assert uniform["perplexity"] == pytest.approx(vocab) and uniform["tokens"] == 3  # [6] predicts nothing
    # log-probs 0 and log(1/4): mean NLL = log(4) / 2 -> perplexity 2
    assert perplexity(lambda ids: np.array([0.0, -np.log(4.0)]), [[1, 2, 3]])["perplexity"] == pytest.approx(2.0)
    with pytest.raises(BackendError, match=r"returned shape \(3,\) for 3 tokens; expected \(2,\)"):
        perplexity(lambda ids: np.zeros(3), [[1, 2, 3]])
    with pytest.raises(DataError, match="no sequence of 2 or more tokens"):
        perplexity(lambda ids: np.zeros(0), [[1]])


# ---------------------------------------------------------------------------------------------------------------
# CLI and bench/run.py


def test_cli_bench_writes_reports(classifier_artifact: Path, tmp_path: Path) -> None:
    from edgellm.cli import cli

    res = CliRunner().invoke(cli, ["bench", str(classifier_artifact), "--no-baselines", "--threads", "1",
                                   "--lengths", "16", "--batch-sizes", "2", "--repeat", "2", "--cold-runs", "0",
                                   "--max-examples", "12", "--name", "cli", "--no-interleave",
                                   "--output-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "| export | onnx-fp32 |" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.json", "cli.md", "cli.png"]
    saved = json.loads((tmp_path / "cli.json").read_text())
    assert saved["settings"]["lengths"] == [16] and saved["settings"]["batch_sizes"] == [2]
    assert saved["settings"]["repeat"] == 2 and saved["data"]["examples"] == 12
    assert saved["settings"]["interleave"] is False and saved["timing"] == {"mode": "sequential"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["MISSING"], "error (ArtifactNotFoundError): artifact folder 'MISSING' does not exist"),
        (["ART", "--lengths", "32,abc"], "give comma-separated integers such as 32,128, not '32,abc'"),
        (["ART", "--lengths", "2"], "error (ConfigError): settings.lengths[0] = 2 is outside [4, inf]"),
        (["ART", "--threads", "0", "--no-baselines"], "error (ConfigError): settings.threads = 0 is outside"),
        (["ART", "--model", "nope"], "error (ArtifactError): artifact has no model named 'nope'"),
        (["ART", "--peer", "vllm", "--no-baselines"],
         "error (ConfigError): settings.peers: unknown engine(s) ['vllm']; known: ['llama.cpp', 'onnxruntime-genai', "
         "'openvino-genai']"),
    ],
)
def test_cli_bench_errors(classifier_artifact: Path, args: list[str], message: str) -> None:
    from edgellm.cli import cli

    args = [str(classifier_artifact) if a == "ART" else a for a in args]
    res = CliRunner().invoke(cli, ["bench", *args])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output


def test_bundled_suites_are_valid() -> None:
    from bench.run import SUITES, load_suite

    names = sorted(p.stem for p in SUITES.glob("*.yaml"))
    assert {"reference", "minilm-embed", "llm-teacher"} <= set(names)
    for name in names:
        suite = load_suite(name)
        assert suite.name == name and (suite.produced_by or suite.recipe) and suite.settings.threads == 2
    assert load_suite("reference").artifact == "artifacts/sentiment-minilm"


def test_bad_suite(tmp_path: Path) -> None:
    from bench.run import load_suite

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nartifact: a\nsettings:\n  repeet: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.settings: unknown key 'repeet'; did you mean 'repeat'"):
        load_suite(str(bad))
    with pytest.raises(ConfigError, match="benchmark suite 'nope' not found"):
        load_suite("nope")


def test_update_readme_between_markers(tmp_path: Path) -> None:
    from bench.run import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench:ref:begin -->\nold table\n<!-- bench:ref:end -->\n\n## Next\n")
    assert update_readme(readme, "ref", "| new | table |\n") is True
    assert readme.read_text() == "# x\n\n<!-- bench:ref:begin -->\n| new | table |\n<!-- bench:ref:end -->\n\n## Next\n"
    assert update_readme(readme, "ref", "| new | table |") is False  # idempotent
    with pytest.raises(ConfigError, match="has no block <!-- bench:other:begin -->"):
        update_readme(readme, "other", "x")


def test_bench_run_explains_a_missing_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.run import main

    assert main(["--suite", "reference", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert f"artifact {tmp_path / 'nothing'} does not exist" in err and "python -m bench.run PATH" in err


def test_bench_run_default_artifact_missing_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import bench.run as bench_run

    monkeypatch.setattr(bench_run, "ROOT", tmp_path)  # a checkout without artifacts/
    assert bench_run.main(["--suite", "reference"]) == 2
    err = capsys.readouterr().err
    assert "artifacts/sentiment-minilm does not exist; build it first: make demo" in err


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux /proc/stat only")
def test_wait_until_quiet_returns_the_last_reading_at_the_deadline() -> None:
    from bench.run import wait_until_quiet

    # threshold -1 can never be met: it returns at the deadline with the reading it took
    reading = wait_until_quiet(0.0, threshold=-1.0, window_s=0.05)
    assert reading is not None and reading >= 0


# ---------------------------------------------------------------------------------------------------------------
# generators (the tiny seeded Llama of conftest)


def test_torch_generator_streams_greedy_tokens_and_scores(tiny_llama_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from edgellm.bench import TorchGenerator

    gen = TorchGenerator(tiny_llama_dir, threads=1)
    prompt = gen.tokenizer.encode("the film was a very good story and the acting").ids
    streamed = list(gen.stream(prompt, 12))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor([prompt])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    assert streamed == expected and len(streamed) == 12
    # perplexity from the scorer equals exp(transformers' mean cross-entropy)
    seq = prompt + streamed
    with torch.no_grad():
        loss = model(torch.tensor([seq]), labels=torch.tensor([seq])).loss.item()
    result = perplexity(gen.score, [seq])
    assert result["perplexity"] == pytest.approx(np.exp(loss), rel=1e-5) and result["tokens"] == len(seq) - 1
    stats = measure_generation(gen.stream, prompt, max_new_tokens=6, warmup=0, repeat=1)
    assert stats["new_tokens"] == 6 and stats["decode_tokens_per_s"] > 0 and stats["time_to_first_token_ms"] > 0
    gen.close()


@pytest.fixture(scope="module")
def llama_artifact(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgellm.quantize.decoder import export_causal_lm

    out = tmp_path_factory.mktemp("lm") / "tiny-lm"
    export_causal_lm(str(tiny_llama_dir), out, formats=("onnx",), quantize=(), source=str(tiny_llama_dir))
    return out


@pytest.mark.slow  # exporting the tiny decoder (with its torch checks) takes 10-30 s
def test_generation_benchmark_teacher_and_artifact(llama_artifact: Path, tiny_llama_dir: Path,
                                                   tmp_path: Path) -> None:
    from edgellm.bench import load_heldout_texts
    from edgellm.runtime import load

    settings = {"threads": 1, "prompt_tokens": 16, "new_tokens": 8, "generation_warmup": 0, "generation_repeat": 2,
                "perplexity_texts": 12, "cold_runs": 0}
    result = run_benchmark(llama_artifact, teacher=str(tiny_llama_dir), settings=settings, name="lm",
                           output_dir=tmp_path, command="edgellm bench lm")
    manifest = json.loads((llama_artifact / "edgellm.json").read_text())
    rows = {r["name"]: r for r in result["subjects"]}
    assert list(rows) == ["teacher-pytorch-fp32", *(m["name"] for m in manifest["models"])]
    assert result["timing"]["mode"] == "interleaved" and result["timing"]["rounds"] == 2  # generation_repeat
    assert result["task"] == "text-generation" and result["data"]["corpus"] == "movie-reviews"
    teacher = rows["teacher-pytorch-fp32"]
    held_out = load_heldout_texts(None, max_texts=12)["texts"]
    for name, row in rows.items():
        gen = row["generation"]
        assert (gen["prompt_tokens"], gen["new_tokens"], gen["repeat"]) == (16, 8, 2)
        assert gen["time_to_first_token_ms"] > 0 and gen["decode_tokens_per_s"] > 0 and gen["prompt_tokens_per_s"] > 0
        assert row["perplexity_texts"] == 12 and row["perplexity_tokens"] > 12
        assert row["vs_teacher"]["decode_speedup"] == pytest.approx(
            gen["decode_tokens_per_s"] / teacher["generation"]["decode_tokens_per_s"])
        assert row["vs_teacher"]["perplexity_ratio"] == pytest.approx(row["perplexity"] / teacher["perplexity"])
        if row["kind"] == "edgellm":  # the runtime's own perplexity on the same texts
            assert row["perplexity"] == pytest.approx(load(llama_artifact, model=row["model"]).perplexity(held_out),
                                                      rel=1e-9)
    # the FP32 export scores text as the FP32 teacher does
    assert rows["onnx-fp32"]["perplexity"] == pytest.approx(teacher["perplexity"], rel=1e-4)
    # cold start of a generator: a fresh process until its first token, peak RSS after the last one
    from edgellm.bench import artifact_subjects, cold_start

    subject = artifact_subjects(llama_artifact, ["onnx-fp32"])[0]
    cold = cold_start(subject, threads=1, work={"prompt_ids": [5, 6, 7, 8], "new_tokens": 6})
    assert cold["cold_start_s"] > 0 and cold["peak_rss_bytes"] >= cold["peak_rss_at_first_result_bytes"] > 10e6
    md = Path(result["paths"]["md"]).read_text()
    assert "| teacher | teacher-pytorch-fp32 |" in md and "| decode tok/s |" in md
    assert f"| {rows['onnx-fp32']['perplexity']:.2f} |" in md
    assert Path(result["paths"]["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _CountingPeer:
    """A peer engine for the benchmark's plumbing: the tiny Llama in PyTorch, counting its generations."""

    def __init__(self, folder: Path, log: list[str]) -> None:
        from edgellm.bench import TorchGenerator

        self._gen, self._log = TorchGenerator(folder, threads=1), log
        self.name, self.format, self.size_bytes, self.info = "fake-engine", "F32", 1234, {"engine": "fake"}

    def stream(self, prompt_ids: Any, max_new_tokens: int) -> Any:
        self._log.append("stream")
        return self._gen.stream(prompt_ids, max_new_tokens)

    def score(self, ids: Any) -> Any:
        return self._gen.score(ids)

    def close(self) -> None:
        self._log.append("close")
        self._gen.close()


@pytest.mark.parametrize("interleave", [True, False])
def test_generation_benchmark_times_peers_in_the_rounds(llama_artifact: Path, tiny_llama_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, interleave: bool) -> None:
    """With alternating rounds, an opened peer takes its turns beside edgellm's models (its row's first token and
    decode are those rounds' record, not a second timing), and is closed after; without, it is opened, timed and
    closed on its own after them. A peer that could not be built stays a row with its reason either way."""
    from edgellm.bench import peers as peer_module

    log: list[str] = []
    spec = peer_module.PeerSpec(peer_module.LLAMA_CPP, str(tiny_llama_dir), "F32")
    monkeypatch.setattr(peer_module, "prepare_peers", lambda teacher, **kw: [
        spec, peer_module.Missing("onnxruntime-genai", "int4", "build failed: test")])
    monkeypatch.setattr(peer_module, "open_peer", lambda item, **kw: _CountingPeer(Path(item.path), log))
    settings = {"threads": 1, "prompt_tokens": 8, "new_tokens": 4, "generation_warmup": 1, "generation_repeat": 3,
                "perplexity_texts": 4, "cold_runs": 0, "baselines": False, "peers": ["llama.cpp"],
                "interleave": interleave}
    result = run_benchmark(llama_artifact, models=["onnx-fp32", "onnx-int8"], teacher=str(tiny_llama_dir),
                           settings=settings, name="lm-peers", output_dir=tmp_path)
    rows = {r["name"]: r for r in result["subjects"]}
    peer = rows["fake-engine F32"]
    assert not peer["missing"] and peer["generation"]["repeat"] == 3 and peer["perplexity"] > 1
    assert rows["onnxruntime-genai int4"]["reason"] == "build failed: test"
    # 1 warm-up + 3 timed runs either way; in the rounds, one more untimed run gives the row its tokens
    assert log == ["stream"] * (5 if interleave else 4) + ["close"]
    timing = result["timing"]
    assert timing["mode"] == ("interleaved" if interleave else "sequential")
    if interleave:
        assert timing["peers"] == 1 and timing["models"] == 3
        assert "3 models (1 of them peers, each in its own process) timed" in Path(result["paths"]["md"]).read_text()


def test_generation_benchmark_reports_a_peer_it_cannot_run(llama_artifact: Path, tiny_llama_dir: Path,
                                                            tmp_path: Path) -> None:
    """A peer that cannot run (llama.cpp needs a GGUF teacher; or llama-cpp-python is not installed) is a row that
    says why, in the JSON and the Markdown, never silently left out; the ratios and plot skip it."""
    settings = {"threads": 1, "prompt_tokens": 8, "new_tokens": 4, "generation_warmup": 0, "generation_repeat": 1,
                "perplexity_texts": 4, "cold_runs": 0, "baselines": False, "peers": ["llama.cpp"]}
    result = run_benchmark(llama_artifact, models=["onnx-fp32"], teacher=str(tiny_llama_dir), settings=settings,
                           name="lm-peers", output_dir=tmp_path)
    peers = [r for r in result["subjects"] if r["stage"] == "peer"]
    assert [(r["name"], r["missing"]) for r in peers] == [("llama.cpp Q8_0", True), ("llama.cpp Q4_0", True)]
    assert all(r["reason"] for r in peers)
    md = Path(result["paths"]["md"]).read_text()
    assert "| peer | llama.cpp Q8_0 | llama.cpp | Q8_0 | missing (below) |" in md
    assert f"- llama.cpp Q4_0: missing: {peers[1]['reason']}" in md
    with pytest.raises(ConfigError, match=r"settings.peers: unknown engine\(s\) \['vllm'\]"):
        run_benchmark(llama_artifact, settings={**settings, "peers": ["vllm"]}, output_dir=None)


def test_generation_benchmark_refuses_a_prompt_over_the_context(llama_artifact: Path) -> None:
    with pytest.raises(ConfigError, match=r"prompt_tokens \+ new_tokens = 200 exceed \S+'s context of 128 tokens"):
        run_benchmark(llama_artifact, settings={"prompt_tokens": 100, "new_tokens": 100, "baselines": False},
                      output_dir=None)


def test_bench_run_readme_only_rerenders_from_the_recorded_json(classifier_result: dict[str, Any], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import bench.run as bench_run

    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "tiny.yaml").write_text("name: tiny\nartifact: nowhere\nreadme_block: tiny\n")
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(classifier_result["paths"]["json"], results / "tiny.json")
    readme = tmp_path / "README.md"
    readme.write_text("## Benchmarks\n\n### Tiny\n\n<!-- bench:tiny:begin -->\n<!-- bench:tiny:end -->\n")
    monkeypatch.setattr(bench_run, "SUITES", suites)
    monkeypatch.setattr(bench_run, "README", readme)
    assert bench_run.main(["--suite", "tiny", "--readme-only", "--output-dir", str(results)]) == 0
    block = readme.read_text().split("<!-- bench:tiny:begin -->\n")[1].split("<!-- bench:tiny:end -->")[0]
    md = (results / "tiny.md").read_text()
    assert md == render_markdown(classifier_result)
    assert block == md.split("\n", 2)[2].strip() + "\n\n![tiny: latency vs accuracy](results/tiny.png)\n"
    assert (results / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    assert bench_run.main(["--suite", "tiny", "--readme-only", "--output-dir", str(tmp_path)]) == 2  # no JSON there
