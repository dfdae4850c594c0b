"""Input bounds (texts per call, characters per text) are enforced with clear InputErrors, and memory stays flat
over 10,000 calls."""

from __future__ import annotations

import gc
import itertools
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgellm.errors import InputError
from edgellm.runtime import load
from edgellm.runtime.text import MAX_BATCH, MAX_TEXT_CHARS, as_texts


@pytest.fixture(scope="module")
def clf(classifier_artifact: Path) -> Any:
    return load(classifier_artifact, threads=1)


def test_limits_are_the_documented_ones() -> None:
    assert MAX_BATCH == 100_000 and MAX_TEXT_CHARS == 1_000_000


def test_batch_at_the_limit_is_accepted_and_one_more_is_refused(clf: Any) -> None:
    assert len(as_texts([""] * MAX_BATCH)) == MAX_BATCH
    with pytest.raises(InputError, match=r"^100,001 texts in one call; the limit is 100,000: split the input$"):
        clf.classify([""] * (MAX_BATCH + 1))
    with pytest.raises(InputError, match="100,001 texts in one call"):
        clf.scores(("a",) * (MAX_BATCH + 1))


def test_an_endless_generator_is_refused_after_reading_one_past_the_limit(clf: Any) -> None:
    counter = itertools.count()
    endless = (str(i) for i in counter)
    with pytest.raises(InputError, match=r"^more than 100,000 texts in one call; the limit is 100,000"):
        clf.classify(endless)
    assert next(counter) == MAX_BATCH + 1  # read exactly MAX_BATCH + 1 items, not forever


def test_a_generator_within_the_limit_works(clf: Any) -> None:
    assert [r["label"] for r in clf.classify(t for t in ["good", "bad"])] == \
        [r["label"] for r in clf.classify(["good", "bad"])]


# (input, words in the InputError)
BAD = [
    (["ok", "x" * (MAX_TEXT_CHARS + 1)], "text 1 has 1,000,001 characters; the limit is 1,000,000"),
    ({"a": 1}, "not dict: answers come back in input order"),  # keys only, easy to pass by mistake
    ({"a", "b"}, "not set: answers come back in input order"),  # no order to match answers to
    (None, "not NoneType"),
    (3.5, "not float"),
    (b"bytes", "not bytes: decode them first"),
    (["ok", None], "text 1 is a NoneType, not a str: None"),
    ([10**5000], "text 0 is a int, not a str: <int>"),  # an int too long to print does not mask the error
]


@pytest.mark.parametrize("value,words", BAD)
def test_bad_input_is_a_clear_input_error(clf: Any, embedder_artifact: Path, value: Any, words: str) -> None:
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        clf.classify(value)
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        load(embedder_artifact).embed(value)


@pytest.mark.parametrize("size", [0, -1, 1.5, "8", True])
def test_bad_batch_size_is_an_input_error(classifier_artifact: Path, size: Any) -> None:
    with pytest.raises(InputError, match=f"batch_size must be a positive int or None, not {size!r}"):
        load(classifier_artifact, batch_size=size)
    with pytest.raises(InputError, match=f"batch_size must be a positive int or None, not {size!r}"):
        load(classifier_artifact).scores(["a text"], batch_size=size)
    with pytest.raises(InputError, match=f"batch_size must be a positive int or None, not {size!r}"):
        load(classifier_artifact).classify([], batch_size=size)  # checked before an empty call returns


def _rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


TEXTS = ["fun", "a great film with a good plot", "", "the worst " * 40, "我很喜欢这部电影", "boring and long " * 5]


@pytest.mark.slow
@pytest.mark.parametrize("backend,task", [("onnxruntime", "classifier"), ("openvino", "embedder")])
def test_memory_is_flat_over_10000_calls(backend: str, task: str, classifier_artifact: Path,
                                         embedder_artifact: Path) -> None:
    model = load(classifier_artifact if task == "classifier" else embedder_artifact, backend=backend, threads=1)
    call = model.classify if task == "classifier" else model.embed
    batches = [[t] for t in TEXTS] + [TEXTS[:3], TEXTS]  # every length and batch shape, seen in warm-up
    for i in range(500):
        call(batches[i % len(batches)])
    before = _rss_mib()
    samples = []
    for i in range(10_000):
        call(batches[i % len(batches)])
        if i % 2_000 == 1_999:
            samples.append(_rss_mib())
    growth = samples[-1] - before
    # a leak of even 1 KiB per call would be 10 MiB here; allocator noise is well under 4 MiB
    assert growth < 4.0, f"RSS grew {growth:.1f} MiB over 10,000 calls: {before:.1f} -> {samples}"
