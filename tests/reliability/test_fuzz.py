"""Fuzzing (hypothesis, derandomized): runtime text input and recipe parsing raise nothing but edgellm's typed
errors, and valid input always gets a well-formed answer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgellm.errors import ConfigError, EdgeLLMError, InputError
from edgellm.recipe import Recipe, apply_overrides, load_recipe, recipe_from_dict
from edgellm.runtime import load
from edgellm.runtime.text import MAX_TEXT_CHARS

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- runtime text ---------------------------------------------------------------------------------------------------

any_char = st.characters(exclude_categories=())  # every code point: control characters and lone surrogates too
cjk = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
special = st.sampled_from(["", " ", "\t\n\r ", "\x00", "\ud800", "\udfff", "a\ud83dz", "\u200b\u200d\ufeff",
                           "\U0001F600" * 50, "我很喜欢这部电影", "Привет мир", "مرحبا", "e\u0301" * 30,
                           "\x1b[31mred\x1b[0m", "[CLS] [SEP] [PAD] [MASK]", "##"])
texts = st.one_of(st.text(any_char, max_size=300), st.text(cjk, max_size=100), special,
                  st.lists(special | st.text(max_size=20), max_size=8).map("".join))
not_str = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=10), st.booleans(),
                    st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers()))
inputs = st.one_of(
    texts,  # one text
    st.lists(texts, max_size=6),  # a batch, the empty one included
    st.lists(texts | not_str, min_size=1, max_size=6),  # a batch with non-str items
    not_str,  # not text at all
    st.tuples(texts, texts),  # any sequence of str works
)


def _valid(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _count(value: Any) -> int:
    return 1 if isinstance(value, str) else len(value)


@pytest.fixture(scope="module")
def clf(classifier_artifact: Path) -> Any:
    return load(classifier_artifact, threads=1)


@pytest.fixture(scope="module")
def emb(embedder_artifact: Path) -> Any:
    return load(embedder_artifact, backend="openvino", threads=1)


@FUZZ
@given(value=inputs, top_k=st.one_of(st.just(1), st.just(2), st.integers(-3, 5), st.none(), st.floats(), st.text()))
@example(value=["ok", 3], top_k=1)
@example(value=b"bytes", top_k=1)
@example(value="\ud800 lone", top_k=2)
def test_classifier_input_fuzz(clf: Any, value: Any, top_k: Any) -> None:
    good_k = isinstance(top_k, int) and 1 <= top_k <= 2
    try:
        result = clf.classify(value, top_k=top_k)
    except EdgeLLMError as exc:
        assert isinstance(exc, InputError)
        assert not (_valid(value) and good_k), f"valid input refused: {exc}"
        return
    assert _valid(value) and good_k
    assert len(result) == _count(value)
    for item in result:
        ranked = item if top_k == 2 else [item]
        assert [r["label"] for r in ranked] in (["negative", "positive"][:top_k], ["positive", "negative"][:top_k])
        assert all(0.0 <= r["score"] <= 1.0 for r in ranked)


@FUZZ
@given(value=inputs)
def test_embedder_input_fuzz(emb: Any, value: Any) -> None:
    try:
        vectors = emb.embed(value)
    except EdgeLLMError as exc:
        assert isinstance(exc, InputError) and not _valid(value), f"{value!r:.80}: {exc}"
        return
    assert _valid(value)
    assert vectors.shape == (_count(value), emb.dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()


def test_a_million_characters_of_mixed_scripts(clf: Any) -> None:
    """The longest text accepted is tokenized and truncated to max_length: the answer is the prefix's answer."""
    unit = "good film 很好看 Фильм хороший \x07\ud800 "
    text = (unit * (MAX_TEXT_CHARS // len(unit) + 1))[:MAX_TEXT_CHARS]
    assert len(text) == 1_000_000
    np.testing.assert_allclose(clf.scores(text), clf.scores(text[:2000]), rtol=0, atol=1e-6)
    with pytest.raises(InputError, match=r"text 1 has 1,000,001 characters; the limit is 1,000,000"):
        clf.classify(["short", text + "x"])


# --- recipes --------------------------------------------------------------------------------------------------------

STAGES = ["teacher", "task", "name", "data", "finetune", "distill", "prune", "quantize", "export", "targets",
          "evaluate", "causal_lm"]
OPTIONS = ["name", "path", "split", "validation", "test", "seed", "max_rows", "max_length", "epochs", "batch_size",
           "learning_rate", "eval_every", "layers", "num_layers", "heads", "ffn", "mode", "backends", "formats",
           "precision", "preset", "tolerance", "latency", "threads", "temperature", "enabled", "trim_vocab"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(["text-classification", "feature-extraction", "text-generation", "dynamic",
                                     "onnx", "openvino", "onnxruntime", "fp32", "bf16", "movie-reviews", "1e-4",
                                     "nan", "-inf", "embedded:all-MiniLM-L6-v2"]),
                    st.integers(min_value=2**63 - 2, max_value=2**70), st.just(10**400))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(OPTIONS) | st.text(max_size=6), inner, max_size=4),
                      max_leaves=12)
recipes = st.dictionaries(st.sampled_from(STAGES) | st.text(max_size=8) | st.integers(), values, max_size=8)
base = st.fixed_dictionaries({"teacher": st.just("x"), "task": st.just("text-classification"),
                              "data": st.just({"name": "movie-reviews"})})
near_valid = st.builds(lambda b, extra: {**b, **extra}, base,
                       st.dictionaries(st.sampled_from(STAGES[3:]),
                                       st.dictionaries(st.sampled_from(OPTIONS), values, max_size=3) | values,
                                       max_size=3))


@FUZZ
@given(data=st.one_of(recipes, near_valid, values))
@example(data={"teacher": "x", "task": "text-classification", "data": {"name": "movie-reviews"},
               "distill": {"epochs": 10**400}})  # too large for a float: was OverflowError
@example(data={"teacher": "x", "task": "text-classification", "data": {"name": "movie-reviews"},
               "distill": {"epochs": "nan"}})  # not finite: was accepted
def test_recipe_from_dict_fuzz(data: Any) -> None:
    try:
        recipe = recipe_from_dict(data)
    except ConfigError as exc:
        assert str(exc).startswith("recipe")
        return
    assert isinstance(recipe, Recipe)
    for stage in (recipe.finetune, recipe.distill):
        if stage is not None:
            assert math.isfinite(stage.epochs) and stage.epochs > 0


def _yaml_text(value: Any) -> str:
    try:
        return yaml.safe_dump(value, allow_unicode=True)
    except yaml.YAMLError:
        return "{}"


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     st.one_of(recipes, near_valid).map(_yaml_text).map(str.encode)),
       overrides=st.lists(st.text(max_size=30) | st.sampled_from(["distill.epochs=1e400", "data=[", "a.b=c",
                                                                  "teacher.x=1", "prune.heads=0.5"]), max_size=3))
@example(raw=b"\xff\xfeteacher: x", overrides=[])  # not UTF-8: was UnicodeDecodeError
@example(raw=b"[" * 5000, overrides=[])  # nested too deeply: was RecursionError
@example(raw=b"teacher: x\nseed: 2020-99-99\n", overrides=[])  # a date no calendar has: was ValueError
@example(raw=b"teacher: " + b"9" * 5000, overrides=[])  # over 4,300 digits: was ValueError
@example(raw=b"teacher: x\ntask: text-classification\ndata: {name: movie-reviews}\n",
         overrides=["distill.epochs=" + "9" * 400])  # was OverflowError
def test_load_recipe_fuzz(raw: bytes, overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(raw)
    try:
        recipe = load_recipe(path, overrides)
    except ConfigError:
        return
    assert isinstance(recipe, Recipe)


@FUZZ
@given(overrides=st.lists(st.text(max_size=40), max_size=4))
def test_apply_overrides_fuzz(overrides: list[str]) -> None:
    try:
        out = apply_overrides({"teacher": "x", "distill": {"epochs": 1}}, overrides)
    except ConfigError:
        return
    assert isinstance(out, dict)
