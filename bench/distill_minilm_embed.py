"""Benchmark: distil all-MiniLM-L6-v2 sentence embeddings into 3- and 2-layer students.

    flock /tmp/edgellm-heavy.lock python -m bench.distill_minilm_embed

The teacher is used as it is (mean pooling + L2 normalisation). Students are built from its layers and trained to
reproduce its pooled vectors on the VADER sentences (movie-reviews train split + the other corpora, minus every
validation / test sentence). Judged by Spearman of student vs teacher cosine similarities on 5,000 seeded pairs of
held-out movie-review sentences. Writes bench/results/distill_minilm_embed.json and .md.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="embedded:all-MiniLM-L6-v2")
    p.add_argument("--students", default="3,2")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--loss", default=None, choices=["mse", "cosine", "mse+cosine"])
    p.add_argument("--augment", default="tweets,nyt-editorials,amazon-reviews")
    p.add_argument("--no-test", action="store_true")
    p.add_argument("--name", default="distill_minilm_embed")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from edgellm.bench import machine_info
    from edgellm.config import to_dict
    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig, DistillConfig
    from edgellm.train import TrainedModel, build_student, distill, evaluate_model, load_model, model_size

    started = time.perf_counter()
    data = load_task_data(DataConfig(name="movie-reviews"), task="feature-extraction")
    teacher = load_model(args.teacher, task="feature-extraction")
    split = "validation" if args.no_test else "test"
    report: dict[str, Any] = {"benchmark": "distill_minilm_embed", "machine": machine_info(),
                              "torch_threads": torch.get_num_threads(), "data": data.describe(), "split": split,
                              "teacher": {"model": args.teacher, "size": model_size(teacher.model),
                                          "embedding": teacher.embedding}, "students": []}
    work = Path(tempfile.mkdtemp(prefix="edgellm-embed-bench-"))
    for spec in [s for s in args.students.split(",") if s]:
        cfg = DistillConfig(num_layers=int(spec), augment_with=[a for a in args.augment.split(",") if a])
        for key, value in (("epochs", args.epochs), ("learning_rate", args.learning_rate),
                           ("embedding_loss", args.loss)):
            if value is not None:
                setattr(cfg, key, value)
        untrained = TrainedModel(model=build_student(teacher.model, cfg), tokenizer=teacher.tokenizer,
                                 task="feature-extraction", embedding=teacher.embedding)
        before = evaluate_model(untrained, data, split=split, teacher=teacher)
        t0 = time.perf_counter()
        student = distill(teacher, data, cfg, work / f"student-{spec}", progress=args.progress)
        wall = time.perf_counter() - t0
        entry = {"spec": spec, "distill": to_dict(cfg), "wall_s": round(wall, 1),
                 "teacher_layers": student.metrics.get("teacher_layers"),
                 "augment_rows": student.metrics.get("augment_rows"), "size": model_size(student.model),
                 "steps": student.metrics["train"]["steps"], "before_training": before,
                 "after_training": evaluate_model(student, data, split=split, teacher=teacher),
                 "curve": [(h["step"], round(h["spearman"], 4)) for h in student.metrics["train"]["history"]]}
        report["students"].append(entry)
        logging.info("student %s: %s", spec, entry["after_training"])
    report["total_wall_s"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(work, ignore_errors=True)
    record(args.name, report, _markdown(report))


def _markdown(r: dict[str, Any]) -> str:
    t = r["teacher"]
    lines = [
        "# Embedding distillation: all-MiniLM-L6-v2 sentence vectors",
        "",
        f"Spearman of student vs teacher cosine similarities on {r['students'][0]['after_training']['pairs'] if r['students'] else 0} "
        f"seeded pairs of **{r['split']}** movie-review sentences; the students copy the teacher's layers, then learn "
        f"its pooled vectors. torch threads {r['torch_threads']}.",
        "",
        "| model | teacher layers | parameters | train wall s | steps | Spearman before training | Spearman after | "
        "mean cosine to teacher |",
        "|---|---|---|---|---|---|---|---|",
        f"| teacher | all {t['size']['layers']} | {t['size']['parameters'] / 1e6:.1f} M | - | - | 1 | 1 | 1 |",
    ]
    for s in r["students"]:
        a, b = s["after_training"], s["before_training"]
        lines.append(f"| student {s['spec']} | {s['teacher_layers']} | {s['size']['parameters'] / 1e6:.1f} M | "
                     f"{s['wall_s']:.0f} | {s['steps']} | {b['spearman']:.4f} | {a['spearman']:.4f} | "
                     f"{a.get('mean_cosine_to_reference', float('nan')):.4f} |")
    lines += ["", f"Total wall time {r['total_wall_s']:.0f} s."]
    for s in r["students"]:
        d = s["distill"]
        lines.append(f"Student {s['spec']}: " + json.dumps({k: d[k] for k in ("epochs", "learning_rate", "batch_size",
                                                                            "embedding_loss", "augment_with")})
                     + f" ({s['augment_rows']} augmentation rows).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
