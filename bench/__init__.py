"""Benchmark suites and their entry point (`python -m bench.run`); recorded results live in bench/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "record"]

RESULTS = Path(__file__).resolve().parent / "results"


def record(name: str, result: dict[str, Any], markdown: str | None = None) -> None:
    """Write bench/results/NAME.json (and NAME.md when `markdown` is given, also printed): a script's record."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    if markdown is not None:
        (RESULTS / f"{name}.md").write_text(markdown, encoding="utf-8")
        print(markdown)
