"""Benchmark: vocabulary extension on Chinese text (issue 16), the MiniLM teacher with and without it.

    flock /tmp/edgellm-heavy.lock python -m bench.chinese_extension                      # recipe settings
    python -m bench.chinese_extension --set finetune.epochs=0.5 --name chinese_extension_trial   # a short trial
    python -m bench.chinese_extension --artifact artifacts/sentiment-chinese   # + the full run's done-when

Teachers: export/sentiment-chinese.yaml's data (chinese-reviews, 8,000 sampled rows, 6,400 / 800 / 800) and
finetune settings (with `--set` overrides), fine-tuned twice from all-MiniLM-L6-v2 with the same seed: once with
`finetune.extend_vocab` off, once on (edgellm.train.finetune); test accuracy of each, the tokens added and the
unknown-token rates before / after. With `--artifact` (the output of `edgellm compress
export/sentiment-chinese.yaml`), also the final INT8 model against the extended teacher, read from the artifact's
manifest (accuracy share, size and p50 latency ratios at 128 tokens against the FP32 PyTorch teacher). Writes
bench/results/NAME.json and .md (numbers produced here, never typed in), with the CPU as lscpu names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import record

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECIPE = Path(__file__).resolve().parent.parent / "export" / "sentiment-chinese.yaml"
TARGETS = {"teacher_gain_points": 10.0, "int8_share_of_teacher": 0.99, "size_ratio": 8.0, "p50_ratio": 8.0}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, as `edgellm compress --set` (repeatable)")
    p.add_argument("--artifact", default=None, help="a finished compress output of the extended recipe")
    p.add_argument("--work", default=None, help="work folder to keep (default: a temporary one)")
    p.add_argument("--name", default="chinese_extension")
    p.add_argument("--arms", default="baseline,extended", help="teachers to train: baseline and / or extended")
    p.add_argument("--progress", action="store_true")
    return p.parse_args()


def lscpu_model() -> str:
    """The CPU's model name as lscpu prints it ("" where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def teacher_arm(recipe: Any, data: Any, extend: bool, work: Path, progress: bool) -> dict[str, Any]:
    from edgellm.train import evaluate_model, finetune

    config = dataclasses.replace(recipe.finetune, extend_vocab=recipe.finetune.extend_vocab if extend else None)
    started = time.perf_counter()
    tm = finetune(recipe.teacher, data, config, work / ("extended" if extend else "baseline"), progress=progress)
    wall = time.perf_counter() - started
    return {"extend_vocab": dataclasses.asdict(config.extend_vocab) if config.extend_vocab else None,
            "test": evaluate_model(tm, data, split="test"), "validation": tm.metrics.get("validation"),
            "steps": tm.metrics["train"]["steps"], "best": tm.metrics["train"]["best"], "wall_s": round(wall, 1),
            "vocab_extension": tm.metrics.get("vocab_extension"), "vocab_size": len(tm.tokenizer)}


def full_run(artifact: Path, extended_teacher: float | None) -> dict[str, Any]:
    """The done-when of the whole recipe, from the artifact's manifest summary rows."""
    from edgellm.artifact import read_manifest

    manifest = read_manifest(artifact)
    rows = manifest.metrics["summary"]
    teacher = next(r for r in rows if r["stage"].startswith("teacher"))
    int8 = [r for r in rows if r["stage"] == "quantize"]
    best = max(int8, key=lambda r: r["metric"])
    out = {"teacher": teacher, "int8": int8, "chosen": best["model"],
           "int8_share_of_teacher": best["metric"] / teacher["metric"],
           "size_ratio": teacher["size_mb"] / best["size_mb"], "p50_ratio": teacher["p50_ms"] / best["p50_ms"],
           "stage_seconds": {k: v.get("seconds") for k, v in manifest.metrics.items()
                             if isinstance(v, dict) and "seconds" in v},
           "vocab_extension": manifest.metrics.get("vocab_extension")}
    if extended_teacher is not None:
        out["pipeline_teacher_vs_bench_teacher"] = [teacher["metric"], extended_teacher]
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Vocabulary extension on chinese-reviews ({result['date']})",
        "",
        f"CPU: {result['cpu']} ({result['machine']['cpu_count']} logical CPUs, load average "
        f"{result['machine'].get('load_average')}); recipe {result['recipe']} with {result['overrides'] or 'no'} "
        f"overrides; data {result['data']['split']['sizes']}, seed {result['data']['split']['seed']}.",
        "",
        "| teacher | vocabulary | test accuracy % | macro-F1 % | train tokens [UNK] | test tokens [UNK] | steps | "
        "wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ("baseline", "extended"):
        if arm not in result:
            continue
        t = result[arm]
        report = t["vocab_extension"]
        if report is None:
            name, rates = "MiniLM-L6, vocabulary as shipped", ("-", "-")
        else:
            name = (f"MiniLM-L6, extended (+{report['added']:,}, min_count {report['min_count']}, "
                    f"init {report['init']})")
            rates = (f"{report['train']['unknown_rate_before']:.1%} -> {report['train']['unknown_rate_after']:.1%}",
                     f"{report['test']['unknown_rate_before']:.1%} -> {report['test']['unknown_rate_after']:.1%}")
        lines.append(f"| {name} | {t['vocab_size']:,} | {t['test']['accuracy']:.2f} | {t['test']['macro_f1']:.2f} | "
                     f"{rates[0]} | {rates[1]} | {t['steps']} | {t['wall_s']:.0f} |")
    if "gain_points" in result:
        met = result["gain_points"] >= TARGETS["teacher_gain_points"]
        lines += ["", f"Gain of the extended teacher: {result['gain_points']:+.2f} points (target >= "
                      f"{TARGETS['teacher_gain_points']:.0f}: {'met' if met else 'not met'})."]
    full = result.get("full")
    if full:
        lines += ["", f"Full recipe: {full['chosen']} at {full['int8_share_of_teacher']:.1%} of the extended "
                      f"teacher's accuracy, {full['size_ratio']:.1f}x smaller, {full['p50_ratio']:.1f}x lower p50 at "
                      "128 tokens than the FP32 PyTorch teacher."]
    else:
        lines += ["", "Full recipe: not run here (see the CHANGELOG for the command)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = _parse()
    from edgellm.bench.machine import machine_info
    from edgellm.data import load_task_data
    from edgellm.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.finetune is None or recipe.finetune.extend_vocab is None:
        raise SystemExit(f"{args.recipe}: finetune.extend_vocab must be set (it is the arm with extension)")
    data = load_task_data(recipe.data, task=recipe.task)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - {"baseline", "extended"}:
        raise SystemExit(f"--arms {args.arms!r}: name baseline and / or extended")
    with tempfile.TemporaryDirectory(prefix="edgellm-zh-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        teachers = {arm: teacher_arm(recipe, data, arm == "extended", work, args.progress) for arm in arms}
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "cpu": lscpu_model(), "machine": machine_info(),
        "recipe": Path(args.recipe).name, "overrides": args.overrides, "data": data.describe(),
        "finetune": dataclasses.asdict(recipe.finetune), **teachers, "targets": TARGETS,
    }
    if len(teachers) == 2:
        result["gain_points"] = teachers["extended"]["test"]["accuracy"] - teachers["baseline"]["test"]["accuracy"]
    if args.artifact:
        result["full"] = full_run(Path(args.artifact), teachers.get("extended", {}).get("test", {}).get("accuracy"))
    record(args.name, result, markdown(result))


if __name__ == "__main__":
    main()
