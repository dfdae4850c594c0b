"""Runs `edgellm compress` many times cheaply, for the kill -9 tests: imports the heavy libraries once, then forks
one child per run. The child is a separate process that runs the real `edgellm compress` command (click entry
point, same code path as the shell); EDGELLM_FAULT makes it SIGKILL itself at a chosen point.

Protocol (one JSON object per line): the test writes {"args": [...], "env": {...}, "log": PATH} on stdin; the
driver answers {"exit": CODE} or {"signal": SIGNUM} and {"seconds": ...} on stdout. EOF on stdin ends it.

Nothing here may start a thread pool before fork (no torch op, no OpenVINO Core, no tokenizer call): the children
would inherit locked pools.
"""

from __future__ import annotations

import json
import os
import sys
import time

PRELOAD = ("torch", "transformers", "safetensors", "onnx", "onnxruntime", "openvino", "nncf", "tokenizers",
           "edgellm.cli", "edgellm.pipeline", "edgellm.data", "edgellm.train", "edgellm.prune", "edgellm.vocab",
           "edgellm.exporting", "edgellm.quantize", "edgellm.runtime", "edgellm.evaluate", "edgellm.bench")


def _child(args: list[str], env: dict[str, str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(env)
    code = 1
    try:
        from edgellm.cli import main

        sys.argv = ["edgellm", *args]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report anything to the log, then exit non-zero
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    import importlib
    import warnings

    warnings.simplefilter("ignore")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(job["args"], job.get("env", {}), job["log"])
        _, status = os.waitpid(pid, 0)
        out: dict[str, float | int] = {"seconds": round(time.perf_counter() - started, 2)}
        if os.WIFSIGNALED(status):
            out["signal"] = os.WTERMSIG(status)
        else:
            out["exit"] = os.WEXITSTATUS(status)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
