"""Cold start and peak memory: each run is a fresh Python process that loads a subject and answers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgellm.bench.subjects import Subject, open_subject
from edgellm.errors import BackendError

__all__ = ["cold_start", "cold_fields", "peak_rss_bytes"]


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM of /proc/self/status (getrusage's ru_maxrss would count
    the parent's pages: the kernel carries the forked copy's high-water mark across exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes; Linux: KiB
    except ImportError:  # Windows
        import psutil

        mem = psutil.Process().memory_info()
        return int(getattr(mem, "peak_wset", mem.rss))


def _child_main() -> None:
    """Entry of the cold-start process: load the subject and produce its first result (an encoder's answer to one
    text, a generator's first token), report; then finish the work (a full batch, the remaining tokens), report."""
    spec = json.loads(sys.stdin.readline())
    subject = Subject.from_dict(spec["subject"])
    work = spec["work"]
    runner: Any = open_subject(subject, threads=int(spec["threads"]))
    if subject.task == "text-generation":
        tokens = iter(runner.stream(work["prompt_ids"], int(work["new_tokens"])))
        next(tokens)
    else:
        runner.predict([work["probe"]])
    sys.stdout.write(json.dumps({"peak_rss_at_first_result_bytes": peak_rss_bytes()}) + "\n")
    sys.stdout.flush()
    if subject.task == "text-generation":
        for _ in tokens:
            pass
    elif work.get("batch"):
        runner.predict(list(work["batch"]), batch_size=len(work["batch"]))  # one inference call
    sys.stdout.write(json.dumps({"peak_rss_bytes": peak_rss_bytes()}) + "\n")
    sys.stdout.flush()


def cold_start(subject: Subject, *, threads: int, work: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """Start a fresh Python process that loads `subject` and produces its first result; time from process start
    to that result (imports, artifact verification, model load, first inference), then let it finish `work` and
    read the process's peak resident memory.

    work: {"probe": text, "batch": [texts]} for encoders; {"prompt_ids": [...], "new_tokens": n} for generators.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = json.dumps({"subject": dataclasses.asdict(subject), "threads": threads, "work": work})
    with tempfile.TemporaryFile(mode="w+") as errors:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", "from edgellm.bench.process import _child_main; _child_main()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            if proc.stdin is None or proc.stdout is None:  # Popen with PIPE always sets both
                raise BackendError("internal: the cold-start process has no pipes")
            proc.stdin.write(spec + "\n")
            proc.stdin.close()
            first = proc.stdout.readline()
            first_s = time.perf_counter() - start
            last = proc.stdout.readline()
            code = proc.wait()
        finally:
            timer.cancel()
        if code != 0 or not first or not last:
            errors.seek(0)
            tail = errors.read()[-1500:].strip()
            reason = "timed out" if code in (-9, 137) else f"exit status {code}"
            raise BackendError(f"cold-start process for {subject.name} failed ({reason}): {tail}")
    report = {**json.loads(first), **json.loads(last)}
    return {"cold_start_s": first_s, "peak_rss_bytes": int(report["peak_rss_bytes"]),
            "peak_rss_at_first_result_bytes": int(report["peak_rss_at_first_result_bytes"])}


def cold_fields(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return {}
    times = [r["cold_start_s"] for r in runs]
    peak = max(r["peak_rss_bytes"] for r in runs)
    return {
        "cold_start_s": float(np.median(times)),
        "cold_start_runs_s": times,
        "peak_rss_bytes": peak,
        "peak_rss_mb": peak / 1e6,
        "peak_rss_at_first_result_mb": max(r["peak_rss_at_first_result_bytes"] for r in runs) / 1e6,
    }


