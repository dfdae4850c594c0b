"""Benchmark: every INT8 path on all-MiniLM-L6-v2 + a 2-class movie-review head, in one run, one table.

    flock /tmp/edgellm-heavy.lock python -m bench.quantize_minilm                 # the recorded run
    python -m bench.quantize_minilm --model PATH                                  # another classifier (a student)

Steps: fine-tune MiniLM-L6 with a 2-class head on movie-reviews (edgellm.train.finetune; or take --model, a
Hugging Face classifier folder such as the distilled student); export an FP32 artifact (ONNX + OpenVINO IR, checked
against torch); add INT8 models to it with edgellm.quantize.quantize_models, one call per variant: ONNX Runtime
dynamic (the avx512-vnni preset: fused transformer ops, per-channel; and without the fusion, without INT8
embeddings, per-tensor), static QDQ (minmax / entropy / percentile calibration on 300 training texts), weight-only
(MatMulNBits 8-bit); OpenVINO NNCF static INT8, weight-only INT8 (compress_weights) and FP16 IR; accuracy-aware
runs (static INT8 with a 0.5-point tolerance: ONNX Runtime keeps its most sensitive ops in float, OpenVINO runs
NNCF's quantize_with_accuracy_control); neural-compressor RTN and PT2E static exported to ONNX; and the peers: Optimum's ORTQuantizer avx512_vnni
dynamic INT8 and the teacher in FP32 PyTorch, built from the same fine-tuned model. Then every model is measured in
this process: accuracy on the test split, file size, and p50 latency at batch 1, 128 tokens, 2 threads
(edgellm.bench.time_calls), engines measured in alternating rounds, each round's load from other processes
recorded. Writes bench/results/quantize_minilm.json and .md (numbers produced here, never typed in).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import record

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGETS = {"accuracy_drop_points": 0.5, "size_vs_fp32": 0.30, "latency_vs_fp32": 0.6}
log = logging.getLogger("bench.quantize_minilm")

# name suffix -> (QuantizeConfig fields, what the row shows). The first one is the recommended default.
VARIANTS: list[tuple[str, dict[str, Any], str]] = [
    ("", {"mode": "dynamic", "fp16": True}, "preset avx512-vnni: ORT dynamic, fused, per-channel; OpenVINO NNCF static"),
    ("-unfused", {"mode": "dynamic", "fuse": False, "backends": ["onnxruntime"]}, "ORT dynamic without the fusion"),
    ("-noemb", {"mode": "dynamic", "quantize_embeddings": False, "backends": ["onnxruntime"]},
     "ORT dynamic, embedding table left FP32"),
    ("-pertensor", {"mode": "dynamic", "per_channel": False, "backends": ["onnxruntime"]},
     "ORT dynamic, one weight scale per tensor"),
    ("-reducerange", {"mode": "dynamic", "reduce_range": True, "backends": ["onnxruntime"]},
     "ORT dynamic, 7-bit weights (the avx2 preset's setting)"),
    ("-static-minmax", {"mode": "static", "calibration_method": "minmax", "backends": ["onnxruntime"]},
     "ORT static QDQ, minmax calibration"),
    ("-static-entropy", {"mode": "static", "calibration_method": "entropy", "backends": ["onnxruntime"]},
     "ORT static QDQ, entropy calibration"),
    ("-static-percentile", {"mode": "static", "calibration_method": "percentile", "backends": ["onnxruntime"]},
     "ORT static QDQ, percentile calibration"),
    ("-wo", {"mode": "weight-only"}, "weight-only INT8 (ORT MatMulNBits; OpenVINO compress_weights)"),
]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="Hugging Face classifier folder (default: fine-tune the teacher)")
    p.add_argument("--teacher", default="embedded:all-MiniLM-L6-v2")
    p.add_argument("--teacher-epochs", type=float, default=1.0)
    p.add_argument("--samples", type=int, default=300, help="calibration texts")
    p.add_argument("--tolerance", type=float, default=0.5, help="accuracy-aware runs: max drop on validation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--length", type=int, default=128, help="tokens per latency input")
    p.add_argument("--repeat", type=int, default=40, help="timed calls per model and round")
    p.add_argument("--rounds", type=int, default=7, help="alternating measurement rounds")
    p.add_argument("--real", type=int, default=100, help="test sentences timed at their own length per round")
    p.add_argument("--no-inc", action="store_true", help="leave out neural-compressor")
    p.add_argument("--work", default=None, help="work folder to keep and reuse (default: a temporary one)")
    p.add_argument("--name", default="quantize_minilm")
    return p.parse_args()


def _model(args: argparse.Namespace, data: Any, work: Path) -> tuple[Path, str]:
    if args.model:
        return Path(args.model), f"given: {args.model}"
    folder = work / "teacher"
    if (folder / "config.json").is_file():
        return folder, f"fine-tuned teacher reused from {folder}"
    from edgellm.recipe import FinetuneConfig
    from edgellm.train import finetune

    start = time.perf_counter()
    tm = finetune(args.teacher, data, FinetuneConfig(epochs=args.teacher_epochs), work / "finetune", progress=False)
    tm.save(folder, overwrite=True)
    return folder, f"{args.teacher} fine-tuned here ({args.teacher_epochs} epoch(s), {time.perf_counter() - start:.0f} s)"


def _export(model: Path, out: Path, data: Any) -> None:
    from edgellm.exporting import export

    if (out / "edgellm.json").is_file():
        return
    export(model, out, task="text-classification", max_length=128, texts=data.validation.texts[:24], overwrite=True)


def _inc_entries(model_dir: Path, stage: Path, manifest: Any, data: Any, samples: int) -> list[dict[str, Any]]:
    """neural-compressor rows: quantize the torch model, export to ONNX, add as model entries (or record why not)."""
    from edgellm.artifact import ModelEntry
    from edgellm.models import load_encoder
    from edgellm.quantize.inc import inc_quantize_onnx

    model = load_encoder(model_dir, task="text-classification")
    notes = []
    for method in ("rtn", "pt2e-static"):
        rel = f"model_int8-inc-{method}.onnx"
        start = time.perf_counter()
        try:
            result = inc_quantize_onnx(model, stage / rel, method=method, tokenizer=stage / "tokenizer.json",
                                       texts=data.train.texts, samples=min(samples, 100), max_length=128)
        except Exception as exc:  # recorded in the table: a path that does not reach our runtime says so
            notes.append({"name": f"onnx-int8-inc-{method}", "error": f"{type(exc).__name__}: {exc}"[:400]})
            continue
        settings = dict(result.settings, seconds=time.perf_counter() - start)
        manifest.models.append(ModelEntry(name=f"onnx-int8-inc-{method}", path=rel, backend="onnxruntime",
                                          precision="int8", files=[rel], quantization=settings))
        for extra in stage.glob(f".model_int8-inc-{method}-source"):
            shutil.rmtree(extra, ignore_errors=True)
    return notes


def _build(fp32: Path, zoo: Path, model_dir: Path, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    from edgellm.artifact import read_manifest, staging, write_manifest
    from edgellm.quantize import QuantData, quantize_models
    from edgellm.recipe import QuantizeConfig

    if (zoo / "edgellm.json").is_file():
        return json.loads((zoo / "build.json").read_text())
    qdata = QuantData.from_task_data(data)
    timings: dict[str, float] = {}
    notes: list[dict[str, Any]] = []
    with staging(zoo, overwrite=True) as stage:
        manifest = read_manifest(fp32)
        for rel in manifest.files:
            shutil.copy2(fp32 / rel, stage / rel)
        for suffix, fields, _ in VARIANTS:
            start = time.perf_counter()
            config = QuantizeConfig(calibration_samples=args.samples, **fields)
            quantize_models(stage, manifest, config=config, data=qdata, threads=args.threads, suffix=suffix)
            timings[suffix or "default"] = time.perf_counter() - start
            log.info("variant %s done in %.0f s", suffix or "default", timings[suffix or "default"])
        for backend, mode in (("onnxruntime", "static"), ("openvino", "static")):  # static: where INT8 costs most
            start = time.perf_counter()
            config = QuantizeConfig(mode=mode, backends=[backend], tolerance=args.tolerance, max_fallback=0.5,
                                    calibration_samples=args.samples)
            try:
                quantize_models(stage, manifest, config=config, data=qdata, threads=args.threads, suffix="-aa")
            except Exception as exc:  # a tolerance that cannot be met is a result too
                notes.append({"name": f"{backend}-int8-aa", "error": f"{type(exc).__name__}: {exc}"[:400]})
            timings[f"aa-{backend}"] = time.perf_counter() - start
        for name in ("openvino-fp32", "openvino-int8"):  # the same IR compiled with AMX-BF16 for its float parts
            entry = manifest.model(name)
            manifest.models.append(dataclasses.replace(entry, name=f"{name}-bf16", inference_precision="bf16",
                                                       metrics={}, files=list(entry.files)))
        if not args.no_inc:
            start = time.perf_counter()
            notes += _inc_entries(model_dir, stage, manifest, data, args.samples)
            timings["neural-compressor"] = time.perf_counter() - start
        manifest.default_model = "onnx-int8"
        write_manifest(stage, manifest)
        build = {"seconds": timings, "notes": notes}
        (stage / "build.json").write_text(json.dumps(build, indent=2))
    return build


def _measure(subjects: list[Any], data: Any, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from edgellm.bench import CpuMonitor, open_subject, texts_of_length, time_calls
    from edgellm.evaluate import classification_metrics

    rows: dict[str, dict[str, Any]] = {}
    runners = {}
    gold = data.test.labels
    for s in subjects:
        runner = open_subject(s, threads=args.threads)
        probs = runner.predict(list(data.test.texts))
        if s.labels and data.labels and list(s.labels) != list(data.labels):
            raise RuntimeError(f"{s.name}: labels {s.labels} differ from the data's {data.labels}")
        metrics = classification_metrics(probs.argmax(1).tolist(), gold, probs.shape[1])
        runners[s.name] = runner
        rows[s.name] = {"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
                        "examples": metrics["examples"], "p50_rounds": [], "real_rounds": [], "other_cores": []}
        log.info("%s: test accuracy %.2f", s.name, metrics["accuracy"])
    padded = {n: itertools.cycle(texts_of_length(r.tokenizer, data.test.texts, args.length, 16))
              for n, r in runners.items()}
    real = list(data.test.texts[: args.real])
    for rnd in range(args.rounds):
        order = list(runners) if rnd % 2 == 0 else list(reversed(runners))  # no engine always goes first
        for name in order:
            runner, cycle = runners[name], padded[name]
            with CpuMonitor() as monitor:
                stats = time_calls(lambda: runner.predict([next(cycle)]), warmup=5, repeat=args.repeat)
            rows[name]["p50_rounds"].append(stats["p50_ms"])
            rows[name]["other_cores"].append(monitor.result.get("other_cores"))
            texts = iter(itertools.cycle(real))
            stats = time_calls(lambda: runner.predict([next(texts)]), warmup=2, repeat=len(real))
            rows[name]["real_rounds"].append(stats["p50_ms"])
        log.info("round %d done", rnd + 1)
    for name, row in rows.items():
        quiet = [p for p, o in zip(row["p50_rounds"], row["other_cores"]) if o is not None and o < 0.25]
        row["p50_ms"] = statistics.median(quiet if len(quiet) >= 3 else row["p50_rounds"])
        row["p50_quiet_rounds"] = len(quiet)
        row["p50_min_ms"] = min(row["p50_rounds"])
        row["p50_real_ms"] = statistics.median(row["real_rounds"])
        runners[name].close()
    return rows


def _describe(entry: Any) -> str:
    q = entry.quantization or {}
    if not q:
        return "-"
    parts = [q.get("tool", ""), q.get("mode", "")]
    for key in ("per_channel", "reduce_range", "fused", "quantize_embeddings"):
        if key in q and q[key] is not None:
            parts.append(f"{key}={q[key]}")
    if q.get("calibration"):
        parts.append(f"calib {q['calibration'].get('method', '')} x{q['calibration'].get('samples', '')}")
    if q.get("accuracy_control"):
        parts.append(f"tolerance {q['accuracy_control'].get('tolerance', q['accuracy_control'].get('max_drop'))}, "
                     f"{len(q['accuracy_control'].get('fell_back', []))} op(s) kept float")
    return ", ".join(str(p) for p in parts if p != "")


def main() -> int:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("nncf", "neural_compressor", "torch", "transformers", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from edgellm.artifact import read_manifest
    from edgellm.bench import artifact_subjects, machine_info, optimum_subject, teacher_subject
    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig

    started = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="quantize-minilm-"))
    work.mkdir(parents=True, exist_ok=True)
    data = load_task_data(DataConfig(name="movie-reviews"))
    model_dir, model_note = _model(args, data, work)
    _export(model_dir, work / "fp32", data)
    build = _build(work / "fp32", work / "zoo", model_dir, data, args)
    manifest = read_manifest(work / "zoo")
    subjects = artifact_subjects(work / "zoo")
    teacher = teacher_subject(model_dir, task="text-classification", labels=data.labels)
    optimum_dir = work / "optimum"
    if optimum_dir.exists():
        shutil.rmtree(optimum_dir)
    subjects += [teacher, optimum_subject(teacher, optimum_dir)]
    rows = _measure(subjects, data, args)

    table = []
    fp32 = {"onnxruntime": rows["onnx-fp32"], "openvino": rows["openvino-fp32"]}
    fp32_size = {"onnxruntime": next(s.size_bytes for s in subjects if s.name == "onnx-fp32"),
                 "openvino": next(s.size_bytes for s in subjects if s.name == "openvino-fp32")}
    peer = rows["optimum-ort-int8"]
    for s in subjects:
        row = rows[s.name]
        base = "onnxruntime" if s.backend in ("onnxruntime", "pytorch") else "openvino"
        entry = next((m for m in manifest.models if m.name == s.name), None)
        table.append({
            "name": s.name, "backend": s.backend, "precision": s.precision,
            "inference_precision": getattr(entry, "inference_precision", None),
            "quantization": _describe(entry) if entry else s.engine,
            "test_accuracy": row["test_accuracy"],
            "drop_vs_fp32": fp32[base]["test_accuracy"] - row["test_accuracy"],
            "validation_drop": (entry.metrics.get("drop") if entry else None),
            "size_mb": s.size_bytes / 1e6, "size_vs_fp32": s.size_bytes / fp32_size[base],
            "p50_ms": row["p50_ms"], "p50_min_ms": row["p50_min_ms"], "latency_vs_fp32": row["p50_ms"] / fp32[base]["p50_ms"],
            "speedup_vs_optimum": peer["p50_ms"] / row["p50_ms"], "p50_real_ms": row["p50_real_ms"],
            "quiet_rounds": row["p50_quiet_rounds"], "rounds": row["p50_rounds"], "other_cores": row["other_cores"],
            "fell_back": ((entry.quantization or {}).get("accuracy_control") or {}).get("fell_back") if entry else None,
        })
    checks = {}
    for name in ("onnx-int8", "openvino-int8"):
        r = next(t for t in table if t["name"] == name)
        checks[name] = {
            "accuracy_drop_points": [r["drop_vs_fp32"], r["drop_vs_fp32"] <= TARGETS["accuracy_drop_points"]],
            "size_vs_fp32": [r["size_vs_fp32"], r["size_vs_fp32"] <= TARGETS["size_vs_fp32"]],
            "latency_vs_fp32": [r["latency_vs_fp32"], r["latency_vs_fp32"] <= TARGETS["latency_vs_fp32"]],
        }
    result = {
        "benchmark": "quantize_minilm",
        "command": "flock /tmp/edgellm-heavy.lock python -m bench.quantize_minilm",
        "model": model_note,
        "data": {"name": "movie-reviews", "split_sizes": {k: len(v) for k, v in data.splits().items()},
                 "labels": data.labels},
        "settings": {k: v for k, v in vars(args).items() if k not in ("work",)},
        "targets": TARGETS,
        "checks": checks,
        "rows": table,
        "build": build,
        "machine": machine_info(),
        "wall_s": time.perf_counter() - started,
    }
    record(args.name, result, _markdown(result))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# INT8 on MiniLM-L6 sentiment (movie-reviews): every path, one run",
        "",
        f"Model: {result['model']}. Data: movie-reviews {result['data']['split_sizes']} (test split for accuracy; "
        "accuracy-aware tolerances are judged on validation). Latency: p50 of batch-1 calls on real test sentences "
        f"cut to {result['settings']['length']} tokens, {result['settings']['threads']} threads, median over "
        f"{result['settings']['rounds']} alternating rounds (rounds with other processes using >= 0.25 cores are "
        "dropped when 3 or more quiet ones remain); 'real' = test sentences at their own length. "
        f"CPU: {m.get('cpu_model', '')} ({', '.join(m.get('cpu_flags', []))}).",
        "",
        f"Command: `{result['command']}` ({result['wall_s'] / 60:.0f} min).",
        "",
        "| model | backend | quantization | test acc % | drop vs FP32 | size MB | size / FP32 | p50 ms (128 tok) | "
        "INT8 / FP32 | vs Optimum | p50 ms real | quiet rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        backend = r["backend"] + (f" ({r['inference_precision']})" if r.get("inference_precision") else "")
        lines.append(
            f"| {r['name']} | {backend} | {r['quantization']} | {r['test_accuracy']:.2f} | {r['drop_vs_fp32']:+.2f} | "
            f"{r['size_mb']:.1f} | {r['size_vs_fp32']:.0%} | {r['p50_ms']:.2f} | {r['latency_vs_fp32']:.2f} | "
            f"{r['speedup_vs_optimum']:.2f}x | {r['p50_real_ms']:.2f} | {r['quiet_rounds']}/{len(r['rounds'])} |")
    lines += ["", "Targets (INT8 vs FP32 of the same backend): accuracy drop <= "
              f"{TARGETS['accuracy_drop_points']} points, size <= {TARGETS['size_vs_fp32']:.0%}, latency ratio <= "
              f"{TARGETS['latency_vs_fp32']}.", ""]
    for name, checks in result["checks"].items():
        parts = [f"{k} {v[0]:.3f} {'PASS' if v[1] else 'FAIL'}" for k, v in checks.items()]
        lines.append(f"- {name}: " + "; ".join(parts))
    fell = [r for r in result["rows"] if r.get("fell_back")]
    for r in fell:
        lines.append(f"- {r['name']} kept in float: {', '.join(r['fell_back'])}")
    for note in result["build"].get("notes", []):
        lines.append(f"- {note['name']}: not in the table: {note['error']}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
