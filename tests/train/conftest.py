"""Fixtures for the trainer tests: a small, easy, seeded sentiment data set and tiny teachers."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import pytest

_GOOD = "great good best fun love brilliant beautiful funny".split()
_BAD = "bad awful boring worst hate dull terrible waste".split()
_FILL = "the film plot story acting script music ending movie scene".split()


def sentiment_rows(n: int = 240, seed: int = 0, labels: tuple[str, str] = ("negative", "positive")
                   ) -> list[dict[str, Any]]:
    """Short texts whose class is given by one sentiment word among filler words (the tiny vocabulary's)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 1
        words = [rng.choice(_GOOD if positive else _BAD)] + rng.sample(_FILL, rng.randint(2, 5))
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" {i}", "label": labels[int(positive)]})
    return rows


@pytest.fixture(scope="session")
def sentiment_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sentiment.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in sentiment_rows()) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_data(sentiment_jsonl: Path) -> Any:
    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig

    return load_task_data(DataConfig(path=str(sentiment_jsonl), max_length=32))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_bert_factory: Callable[..., Path]) -> Path:
    """A 3-layer tiny BERT classifier (random weights) whose head has the data's labels: used as it is."""
    return tiny_bert_factory(task="text-classification", layers=3, seed=1)


@pytest.fixture(scope="session")
def tiny_encoder3_dir(tiny_bert_factory: Callable[..., Path]) -> Path:
    """A 3-layer tiny BERT without a head (like MiniLM): needs fine-tuning for classification."""
    return tiny_bert_factory(task="feature-extraction", layers=3, seed=2)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """Tiny models train faster on one thread, and far faster when other jobs share the CPU (OpenMP threads
    waiting on each other). Restored afterwards for the rest of the suite."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
