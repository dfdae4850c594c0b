"""Fault injection for the reliability tests: `kill -9` of this process at a named point. Inert unless set.

    EDGELLM_FAULT=distill:checkpoint edgellm compress export/smoke.yaml -o out   # dies after distill's 1st checkpoint

A point is `<scope>:<name>`: the scope is the pipeline stage running (teacher, distill, prune, vocab, export,
quantize, evaluate, publish; "" outside a pipeline), the name one of

    checkpoint  a training checkpoint was just written (edgellm.train.loop)
    staged      a folder is fully written in its staging folder, not yet renamed into place (edgellm.artifact)
    manifest    edgellm.json is written to its temporary name, not yet renamed (edgellm.artifact.write_manifest)
    done        a pipeline stage returned; its stage.json is not yet written (edgellm.pipeline)

EDGELLM_FAULT may list several points, comma-separated; the first one reached kills the process with SIGKILL
(no cleanup handlers run, exactly like the OOM killer or a power cut of the process).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import signal
from typing import Iterator

__all__ = ["ENV", "fault_point", "fault_scope"]

log = logging.getLogger(__name__)

ENV = "EDGELLM_FAULT"
_scope: contextvars.ContextVar[str] = contextvars.ContextVar("edgellm_fault_scope", default="")


@contextlib.contextmanager
def fault_scope(name: str) -> Iterator[None]:
    """Name the stage that fault points reached inside this block belong to."""
    token = _scope.set(name)
    try:
        yield
    finally:
        _scope.reset(token)


def fault_point(name: str) -> None:
    """SIGKILL this process if EDGELLM_FAULT names `<current scope>:<name>`; otherwise do nothing."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    here = f"{_scope.get()}:{name}"
    if here in (w.strip() for w in wanted.split(",")):
        log.warning("%s=%s: killing process %d at %s", ENV, wanted, os.getpid(), here)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
