"""Device benchmarks: timing statistics, machine facts, and every stage measured side by side.

Every latency number in edgellm comes from `time_calls`:

    stats = time_calls(lambda: model.classify(["text"]), warmup=10, repeat=100)
    stats["p50_ms"], stats["p90_ms"], stats["p99_ms"]

Encoders (classification, embeddings): `run_benchmark(artifact, compare=[...])` measures every model entry of the
artifacts plus two baselines built from the teacher in the same run (FP32 PyTorch through transformers, and
Optimum's export + `ORTQuantizer` avx512_vnni dynamic INT8), and writes NAME.json / NAME.md / NAME.png:

    result = run_benchmark("artifacts/sentiment-minilm", settings=BenchSettings(threads=2), name="reference")

Generation: `measure_generation(stream, prompt_ids, ...)` times any token stream (time to first token, prompt and
decode tokens/s), `measure_generation_interleaved` several streams in alternating rounds (ratios that hold on a
drifting machine); `perplexity(score, sequences)` takes any next-token log-probability function.

Modules: stats (timers), machine (machine facts), subjects (engines and models), inputs (texts of exact token
lengths, the test split, held-out text), process (cold start, peak memory), benchmark (the run), report
(JSON / Markdown / PNG), generation (token-stream timing, perplexity, the PyTorch reference generator). Nothing heavy is imported here.
"""

from __future__ import annotations

from edgellm.bench.benchmark import RESULT_SCHEMA, UNITS, BenchSettings, measure_subject, run_benchmark
from edgellm.bench.generation import (TokenScorer, TokenStream, TorchGenerator, measure_generation,
                                     measure_generation_interleaved, perplexity)
from edgellm.bench.inputs import centroid_accuracy, load_heldout_texts, load_test_split, texts_of_length
from edgellm.bench.machine import CpuMonitor, machine_info, parse_cpuinfo, parse_proc_stat
from edgellm.bench.process import cold_start
from edgellm.bench.report import plot_results, render_markdown, write_results
from edgellm.bench.stats import percentile, summarize_ms, time_calls, time_interleaved
from edgellm.bench.subjects import Subject, artifact_subjects, open_subject, optimum_subject, teacher_subject

__all__ = [
    "percentile",
    "summarize_ms",
    "time_calls",
    "time_interleaved",
    "machine_info",
    "parse_cpuinfo",
    "parse_proc_stat",
    "CpuMonitor",
    "BenchSettings",
    "Subject",
    "artifact_subjects",
    "teacher_subject",
    "optimum_subject",
    "open_subject",
    "texts_of_length",
    "load_test_split",
    "load_heldout_texts",
    "centroid_accuracy",
    "measure_subject",
    "cold_start",
    "run_benchmark",
    "write_results",
    "render_markdown",
    "plot_results",
    "TokenStream",
    "TokenScorer",
    "measure_generation",
    "measure_generation_interleaved",
    "perplexity",
    "TorchGenerator",
    "RESULT_SCHEMA",
    "UNITS",
]
