"""GPU check: run a classifier artifact on the GPU (ONNX Runtime CUDA EP, OpenVINO GPU) beside the CPU.

    python -m bench.gpu_check artifacts/sentiment-minilm         # an existing classifier artifact
    python -m bench.gpu_check --build artifacts/gpu-check        # export MiniLM-L6 (untrained 2-class head) first,
                                                                 # generic + nvidia-small-gpu + intel-gpu models

Writes bench/results/NAME.json and NAME.md (NAME: gpu-check): batch-1 latency p50 / p90 / p99 at `--length` tokens
for every device present, the largest probability difference of each GPU run from the CPU FP32 run, and, when no
GPU is present, says so in both files ("no GPU found", with the providers and devices that were found). Run it
alone on the machine (here: under `flock /tmp/edgellm-heavy.lock`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench import record
from edgellm.errors import EdgeLLMError

__all__ = ["RUNS", "gpu_check", "render_markdown", "main"]

ROOT = Path(__file__).resolve().parent.parent

# (label, backend, device, target whose model is preferred when the artifact holds one)
RUNS = [
    ("ONNX Runtime CPU", "onnxruntime", "cpu", None),
    ("OpenVINO CPU", "openvino", "cpu", None),
    ("ONNX Runtime CUDA EP", "onnxruntime", "cuda", "nvidia-small-gpu"),
    ("OpenVINO GPU", "openvino", "gpu", "intel-gpu"),
]


def build_artifact(output: Path, *, max_length: int) -> None:
    """MiniLM-L6 with a fresh 2-class head (latency does not depend on training), generic and GPU models."""
    from edgellm.exporting import export

    export("embedded:all-MiniLM-L6-v2", output, task="text-classification", formats=["onnx", "openvino"],
           targets=["nvidia-small-gpu", "intel-gpu"], max_length=max_length, overwrite=True)


def _measure(artifact: Path, backend: str, device: str, target: str | None, *, text: str, probe: list[str],
             warmup: int, repeat: int, threads: int | None) -> tuple[dict[str, Any], np.ndarray | None]:
    from edgellm.artifact import read_manifest
    from edgellm.bench.stats import time_calls
    from edgellm.runtime import load

    manifest = read_manifest(artifact)
    has_target = any(m.target == target and m.backend == backend for m in manifest.models) if target else False
    options: dict[str, Any] = {"target": target} if has_target else {"backend": backend}
    row: dict[str, Any] = {"backend": backend, "device": device}
    try:
        model = load(artifact, device=device, threads=threads, **options)
    except EdgeLLMError as exc:
        return {**row, "status": f"failed: {type(exc).__name__}: {exc}"}, None
    info = model.describe()
    row.update(model=model.entry.name, precision=model.entry.precision, engine_device=info["device"])
    row.update(time_calls(lambda: model.scores([text]), warmup=warmup, repeat=repeat))
    row["status"] = "measured"
    return row, model.scores(probe)


def gpu_check(artifact: Path, *, length: int = 128, warmup: int = 10, repeat: int = 50,
              threads: int | None = None) -> dict[str, Any]:
    """Measure every run of RUNS whose device is present; the result as a JSON-ready dict."""
    from edgellm.artifact import read_manifest
    from edgellm.bench.inputs import texts_of_length
    from edgellm.bench.machine import machine_info
    from edgellm.data import SAMPLE_TEXTS
    from edgellm.runtime import available_devices
    from edgellm.runtime.text import TextEncoder

    manifest = read_manifest(artifact)
    if manifest.task != "text-classification":
        raise SystemExit(f"{artifact} is a {manifest.task} artifact; the GPU check takes a classifier")
    length = min(length, manifest.max_length)
    encoder = TextEncoder(artifact / manifest.tokenizer, max_length=manifest.max_length)
    (text,) = texts_of_length(encoder.tokenizer, SAMPLE_TEXTS, length, 1)
    present = available_devices()
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    for label, backend, device, target in RUNS:
        if device not in present[backend]:
            rows.append({"run": label, "backend": backend, "device": device,
                         "status": f"not present ({backend} devices here: {present[backend]})"})
            continue
        row, scores = _measure(artifact, backend, device, target, text=text, probe=list(SAMPLE_TEXTS),
                               warmup=warmup, repeat=repeat, threads=threads)
        if scores is not None:
            if reference is None:
                reference = scores  # the first run, ONNX Runtime on the CPU
            row["max_abs_prob_diff_vs_first_cpu_run"] = float(np.abs(scores - reference).max())
        rows.append({"run": label, **row})
    gpu_rows = [r for r in rows if r["device"] != "cpu"]
    gpu_found = any(r["status"] == "measured" for r in gpu_rows)
    import onnxruntime

    summary = ("GPU measured: " + ", ".join(r["run"] for r in gpu_rows if r["status"] == "measured")) if gpu_found \
        else (f"no GPU found: ONNX Runtime providers {onnxruntime.get_available_providers()}, OpenVINO devices "
              f"{present['openvino']}; only the CPU was measured")
    return {
        "artifact": str(artifact),
        "task": manifest.task,
        "tokens": length,
        "batch": 1,
        "threads": threads,
        "gpu_found": gpu_found,
        "summary": summary,
        "available_devices": present,
        "runs": rows,
        "machine": machine_info(),
        "command": "python -m bench.gpu_check " + " ".join(sys.argv[1:]),
    }


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {result['artifact']} (batch 1, {result['tokens']} tokens)",
        "",
        f"**{result['summary']}**",
        "",
        "| run | model | precision | engine device | p50 ms | p90 ms | p99 ms | max abs prob diff vs CPU | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        cells = [f"{r[k]:.2f}" if k in r else "" for k in ("p50_ms", "p90_ms", "p99_ms")]
        diff = r.get("max_abs_prob_diff_vs_first_cpu_run")
        lines.append(f"| {r['run']} | {r.get('model', '')} | {r.get('precision', '')} | {r.get('engine_device', '')} | "
                     + " | ".join(cells) + f" | {'' if diff is None else f'{diff:.2e}'} | {r['status']} |")
    machine = result["machine"]
    lines += ["", f"Machine: {machine.get('cpu_model', '')}, {machine.get('cpu_count')} CPUs; "
              f"command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", nargs="?", default=None, help="classifier artifact folder")
    parser.add_argument("--build", metavar="DIR", default=None,
                        help="export MiniLM-L6 (generic + nvidia-small-gpu + intel-gpu models) to DIR and use it")
    parser.add_argument("--length", type=int, default=128, help="tokens per text (default 128)")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per run (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the engine's)")
    parser.add_argument("--name", default="gpu-check", help="result name under bench/results/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (args.artifact is None) == (args.build is None):
        parser.error("give an ARTIFACT or --build DIR")
    artifact = Path(args.build or args.artifact)
    try:
        if args.build:
            build_artifact(artifact, max_length=args.length)
        result = gpu_check(artifact, length=args.length, warmup=args.warmup, repeat=args.repeat,
                           threads=args.threads)
    except EdgeLLMError as exc:
        print(f"error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    record(args.name, result, render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
