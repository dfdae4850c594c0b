"""Vocabulary extension on tiny seeded BERTs: the characters a text needs join the WordPiece vocabulary, with new
embedding rows; the HF tokenizer, tokenizer.json, the runtime and the exported graph agree; trimming composes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from edgellm.errors import ConfigError, DataError, ModelError  # noqa: E402
from edgellm.recipe import ExtendVocabConfig, recipe_from_dict  # noqa: E402

# The tiny vocabulary (tests/conftest.py) knows English words and a-z / digits, no CJK character and no emoji.
# Missing pieces and their counts, by hand: 很 3, 好 3, 电 2, 影 2, 这 1, 部 1, 差 1, 坏 1, "😀" 1 (a word of its own),
# "##😀" 1 (inside "great😀": emoji are not punctuation, so BERT does not split them off).
TRAIN = ["这部电影很好 film", "电影很差 film", "很好 great😀", "好 😀 fun", "坏"]
TOKENS = 19  # 7 + 5 + 3 + 3 + 1 tokens, of which 6 + 4 + 3 + 2 + 1 = 16 are [UNK]
MIXED = ["这部电影很好, the film was great! 😀", "好 film 😀😀 坏了", "ＡＢＣ１２３ 很 ok", "the movie was 差劲 👍🏽",
         "Ünïcödé 电影 ça va", "plain english text only"]


def load(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def extend(folder: Path, **config: Any) -> Any:
    from edgellm.vocab import extend_vocabulary

    model, tok = load(folder)
    return extend_vocabulary(model, tok, TRAIN, config=ExtendVocabConfig(**config), held_out=MIXED[:2])


def test_missing_pieces_are_counted_by_hand(tiny_classifier_dir: Path) -> None:
    from edgellm.vocab import unknown_pieces

    _, tok = load(tiny_classifier_dir)
    assert dict(unknown_pieces(tok, TRAIN)) == {"这": 1, "部": 1, "电": 2, "影": 2, "很": 3, "好": 3, "差": 1,
                                                "##😀": 1, "😀": 1, "坏": 1}


@pytest.mark.parametrize("min_count, max_tokens, added, unknown, tokens", [
    (2, 10_000, ["很", "好", "电", "影"], 6, TOKENS),  # 这 部 差 坏 😀 great😀 stay [UNK]
    (3, 10_000, ["很", "好"], 10, TOKENS),  # 电 影 (twice each, 4 tokens) stay [UNK] too
    (2, 3, ["很", "好", "电"], 8, TOKENS),  # the cap keeps the most frequent, ties in order of first sight
    (1, 10_000, ["很", "好", "电", "影", "这", "部", "差", "##😀", "😀", "坏"], 0, TOKENS + 1),  # great ##😀: one more
])
def test_unknown_rate_drops_to_the_expected_value(tiny_classifier_dir: Path, min_count: int, max_tokens: int,
                                                  added: list[str], unknown: int, tokens: int) -> None:
    result = extend(tiny_classifier_dir, min_count=min_count, max_tokens=max_tokens)
    assert result.added == added
    train = result.report["train"]
    assert (train["tokens_before"], train["unknown_rate_before"]) == (TOKENS, 16 / TOKENS)
    assert (train["tokens_after"], train["unknown_rate_after"]) == (tokens, unknown / tokens)
    assert result.report["added"] == len(added) and result.report["capped"] == (1 if max_tokens == 3 else 0)
    vocab = result.tokenizer.get_vocab()
    size = result.report["vocab_size_before"]
    assert [vocab[t] for t in added] == list(range(size, size + len(added)))  # appended in order
    assert result.report["vocab_size_after"] == len(result.tokenizer) == size + len(added)


@pytest.mark.parametrize("init", ["mean", "unk"])
def test_new_embedding_rows_have_the_chosen_init_and_old_rows_are_kept(tiny_classifier_dir: Path,
                                                                       init: str) -> None:
    original, tok = load(tiny_classifier_dir)
    old = original.get_input_embeddings().weight.detach().clone()
    result = extend(tiny_classifier_dir, min_count=1, init=init)
    weight = result.model.get_input_embeddings().weight.detach()
    n = len(result.added)
    assert weight.shape == (old.shape[0] + n, 32) and result.model.config.vocab_size == old.shape[0] + n
    assert torch.equal(weight[: old.shape[0]], old)
    expected = old.mean(0) if init == "mean" else old[tok.unk_token_id]
    torch.testing.assert_close(weight[old.shape[0]:], expected.expand(n, -1), rtol=0, atol=1e-7)
    assert result.report["parameters_after"] - result.report["parameters_before"] == n * 32


def test_normal_init_draws_distinct_seeded_rows_with_the_tables_mean_and_covariance(
        tiny_classifier_dir: Path) -> None:
    from edgellm.vocab import _grow_embeddings

    first = extend(tiny_classifier_dir, min_count=1, init="normal")
    again = extend(tiny_classifier_dir, min_count=1, init="normal")
    n = len(first.added)
    rows = first.model.get_input_embeddings().weight.detach()[-n:]
    assert torch.equal(rows, again.model.get_input_embeddings().weight.detach()[-n:])  # seeded
    assert torch.cdist(rows, rows).add(torch.eye(n) * 1e9).min() > 0.1  # pairwise distinct
    model, _ = load(tiny_classifier_dir)
    table = model.get_input_embeddings().weight.detach().double().clone()
    _grow_embeddings(model, 20_000, "normal", 1)
    drawn = model.get_input_embeddings().weight.detach().double()[table.shape[0]:]
    scale = table.std(0).mean()
    assert (drawn.mean(0) - table.mean(0)).abs().max() < 0.05 * scale
    assert (torch.cov(drawn.T) - torch.cov(table.T)).abs().max() < 0.05 * scale ** 2
    assert torch.equal(model.get_input_embeddings().weight.detach()[: table.shape[0]].double(), table)


def test_unk_init_keeps_the_outputs_of_text_whose_unknown_words_are_single_characters(
        tiny_classifier_dir: Path) -> None:
    """Each CJK character is one word: [UNK] before, one new token with the [UNK] row after, so same logits."""
    reference, tok = load(tiny_classifier_dir)
    result = extend(tiny_classifier_dir, min_count=1, init="unk")
    texts = ["这部电影很好 film", "电影很差 film", "坏"]
    before = tok(texts, padding=True, return_tensors="pt")
    after = result.tokenizer(texts, padding=True, return_tensors="pt")
    assert not torch.equal(before["input_ids"], after["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(result.model(**after).logits, reference(**before).logits, rtol=0, atol=1e-6)


def test_runtime_tokenizer_equals_the_hf_tokenizer_on_mixed_script_text(tiny_classifier_dir: Path,
                                                                        tmp_path: Path) -> None:
    from edgellm.runtime.text import TextEncoder

    result = extend(tiny_classifier_dir, min_count=1)
    folder = tmp_path / "saved"
    result.tokenizer.save_pretrained(folder)
    vocab_txt = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab_txt[-len(result.added):] == result.added  # vocab.txt extended like tokenizer.json
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["model"]["vocab"] == result.tokenizer.get_vocab()
    encoder = TextEncoder(folder / "tokenizer.json", max_length=64)
    got = encoder.encode(MIXED)
    want = result.tokenizer(MIXED, padding=True, return_tensors="np")
    assert (got["input_ids"] == want["input_ids"]).all() and (got["attention_mask"] == want["attention_mask"]).all()
    assert result.tokenizer.tokenize("很好 great😀") == ["很", "好", "great", "##😀"]
    assert result.tokenizer.tokenize("👍🏽 差劲") == ["[UNK]", "差", "[UNK]"]  # never seen: still unknown


def test_extension_then_trimming_keeps_ids_and_outputs_on_the_kept_text(tiny_classifier_dir: Path) -> None:
    from edgellm.vocab import trim_vocabulary

    result = extend(tiny_classifier_dir, min_count=1)
    reference, _ = load(tiny_classifier_dir)
    reference.resize_token_embeddings(len(result.tokenizer), mean_resizing=False)
    reference.load_state_dict(result.model.state_dict())
    extended_tok = result.tokenizer
    trimmed = trim_vocabulary(result.model, extended_tok, TRAIN)
    assert set(result.added) <= set(trimmed.tokenizer.get_vocab())  # the new tokens are text the task uses
    before = extended_tok(TRAIN, padding=True, return_tensors="pt")
    after = trimmed.tokenizer(TRAIN, padding=True, return_tensors="pt")
    keep = torch.tensor(trimmed.keep_ids)
    assert torch.equal(keep[after["input_ids"]], before["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(trimmed.model(**after).logits, reference(**before).logits, rtol=0, atol=0)


def test_export_of_an_extended_model_equals_torch_through_the_runtime(tiny_classifier_dir: Path,
                                                                      tmp_path: Path) -> None:
    from edgellm.artifact import write_manifest
    from edgellm.exporting import encoder_manifest, write_encoder_models
    from edgellm.runtime import load as load_artifact

    result = extend(tiny_classifier_dir, min_count=1)
    with torch.no_grad():  # make the new rows distinct, as fine-tuning would
        rows = result.model.get_input_embeddings().weight
        rows[-len(result.added):] += torch.randn(len(result.added), 32, generator=torch.Generator().manual_seed(0))
    folder = tmp_path / "artifact"
    folder.mkdir()
    result.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    entries = write_encoder_models(result.model, result.tokenizer, folder, task="text-classification",
                                   max_length=32, formats=("onnx",), texts=MIXED, atol=1e-4)
    write_manifest(folder, encoder_manifest(result.model, task="text-classification", models=entries,
                                            max_length=32, source="tiny"))
    scores = load_artifact(str(folder)).scores(MIXED)
    with torch.no_grad():
        logits = result.model(**result.tokenizer(MIXED, padding=True, truncation=True, max_length=32,
                                                  return_tensors="pt")).logits
    assert abs(scores - torch.softmax(logits, -1).numpy()).max() < 1e-5


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ({"min_count": 0}, r"extend_vocab.min_count = 0 must be an integer >= 1"),
    ({"max_tokens": -1}, r"extend_vocab.max_tokens = -1 must be an integer >= 1"),
    ({"init": "zeros"}, r"extend_vocab.init = 'zeros' is not one of \['normal', 'mean', 'unk'\]"),
])
def test_bad_settings_are_refused_by_name_before_anything_changes(tiny_classifier_dir: Path,
                                                                  config: dict[str, Any], message: str) -> None:
    from edgellm.vocab import extend_vocabulary

    model, tok = load(tiny_classifier_dir)
    with pytest.raises(ConfigError, match=message):
        extend_vocabulary(model, tok, TRAIN, config=ExtendVocabConfig(**config))
    assert model.get_input_embeddings().weight.shape[0] == len(tok)  # nothing changed
    recipe = {"teacher": "x", "task": "text-classification", "data": {"name": "movie-reviews"},
              "finetune": {"extend_vocab": config}}
    with pytest.raises(ConfigError, match="finetune." + message):
        recipe_from_dict(recipe)


def test_a_tokenizer_that_is_not_wordpiece_and_empty_text_are_refused(tiny_classifier_dir: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from edgellm.vocab import extend_vocabulary

    backend = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2, "<unk>": 3}, merges=[("a", "b")], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    model, tok = load(tiny_classifier_dir)
    with pytest.raises(ModelError, match=r"vocabulary extension supports \['WordPiece'\] tokenizers, not 'BPE': "
                                         r"remove finetune.extend_vocab, or use a BERT-family teacher"):
        extend_vocabulary(model, bpe, ["ab a b"])
    with pytest.raises(DataError, match="needs the task's training texts; got none"):
        extend_vocabulary(model, tok, [])


def test_a_teacher_whose_head_is_used_as_it_is_cannot_be_extended(tiny_classifier_dir: Path,
                                                                   tmp_path: Path) -> None:
    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig, FinetuneConfig
    from edgellm.train import finetune

    path = tmp_path / "rows.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *[(f"{t} {i}", ("negative", "positive")[i % 2]) for i, t in
                                                      enumerate(TRAIN * 4)]])
    data = load_task_data(DataConfig(path=str(path)))
    config = FinetuneConfig(extend_vocab=ExtendVocabConfig())
    with pytest.raises(ConfigError, match=r"finetune.extend_vocab: teacher = .* already has a classification head"):
        finetune(str(tiny_classifier_dir), data, config, tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_the_recipe_refuses_extension_where_nothing_would_learn_the_new_rows() -> None:
    with pytest.raises(ConfigError, match="finetune.extend_vocab needs task text-classification"):
        recipe_from_dict({"teacher": "x", "task": "feature-extraction", "data": {"name": "movie-reviews"},
                          "finetune": {"extend_vocab": {}}})
    assert recipe_from_dict({"teacher": "x", "task": "text-classification", "data": {"name": "movie-reviews"},
                             "finetune": {"extend_vocab": {}}}).finetune.extend_vocab == ExtendVocabConfig()


# --- the pipeline: extended teacher, student, trimming, export, INT8, runtime ----------------------------------------

_POS = ["很好", "不错", "喜欢", "满意", "推荐"]
_NEG = ["很差", "失望", "后悔", "难用", "太慢"]
_THINGS = ["这本书", "这部电影", "手机", "电脑", "服务", "包装", "质量", "价格"]


@pytest.fixture(scope="module")
def extended_run(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edgellm.pipeline import compress

    teacher = tiny_encoder_dir  # no classification head: fine-tuned, its vocabulary extended first
    folder = tmp_path_factory.mktemp("extended")
    path = folder / "reviews.csv"
    rows = [(f"{_THINGS[i % 8]}{(_POS if i % 2 else _NEG)[i // 2 % 5]} film", "positive" if i % 2 else "negative")
            for i in range(100)]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    recipe = recipe_from_dict({
        "name": "zh", "teacher": str(teacher), "task": "text-classification",
        "data": {"path": str(path), "max_length": 32, "split": {"validation": 0.2, "test": 0.2, "seed": 13}},
        "finetune": {"epochs": 1.0, "batch_size": 16, "eval_every": 10, "extend_vocab": {"min_count": 2}},
        "distill": {"num_layers": 1, "epochs": 1.0, "batch_size": 16, "eval_every": 10},
        "export": {"formats": ["onnx"], "max_length": 32, "trim_vocab": True},
        "quantize": {"mode": "dynamic", "backends": ["onnxruntime"], "calibration_samples": 16},
        "evaluate": {"latency": False, "threads": 1},
    })
    lines: list[str] = []
    result = compress(recipe, folder / "art", progress=False, echo=lines.append)
    return {"result": result, "lines": lines, "out": folder / "art", "data": path}


def test_pipeline_records_the_extension_and_carries_it_to_the_runtime(extended_run: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    from edgellm.artifact import read_manifest
    from edgellm.runtime import load as load_artifact
    from edgellm.train import load_model

    result, out = extended_run["result"], extended_run["out"]
    manifest = read_manifest(out)
    report = manifest.metrics["vocab_extension"]
    assert report == manifest.metrics["teacher"]["training"]["vocab_extension"]
    # by hand: each CJK character is a word of its own, [UNK] to the tiny teacher; those seen twice are added
    from collections import Counter

    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig, SplitConfig

    data = load_task_data(DataConfig(path=str(extended_run["data"]), split=SplitConfig(0.2, 0.2, 13)))
    seen = Counter(c for t in data.train.texts for c in t if "\u4e00" <= c <= "\u9fff")
    chars = {c for c, n in seen.items() if n >= 2}
    assert report["added"] == len(chars) > 25 and report["below_min_count"] == len(seen) - len(chars)
    tokens = sum(seen.values()) + len(data.train)  # the characters and one "film" per row
    train = report["train"]
    assert (train["tokens_before"], train["tokens_after"]) == (tokens, tokens)
    assert train["unknown_rate_before"] == sum(seen.values()) / tokens
    assert train["unknown_rate_after"] == sum(n for n in seen.values() if n < 2) / tokens
    assert report["test"]["texts"] == len(data.test) and report["test"]["unknown_rate_after"] < report["test"]["unknown_rate_before"]
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert (f"{report['added']:,} tokens added ({report['vocab_size_before']:,} -> {report['vocab_size_after']:,}); "
            f"tokens unknown to the teacher: train {train['unknown_rate_before']:.1%} -> "
            f"{train['unknown_rate_after']:.1%}, test ") in summary
    assert any(line.startswith("[teacher] Vocabulary extended") for line in extended_run["lines"])
    # carried through: the artifact's (trimmed) tokenizer knows the characters; the runtime reads them
    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab()
    assert chars <= set(vocab)
    trimmed = load_model(result.stages["vocab"].folder / "model", task="text-classification")
    texts = ["这本书很好 film", "手机太慢 film", "包装满意"]
    fp32 = load_artifact(str(out), model="onnx-fp32")
    assert (fp32.encoder.encode(texts)["input_ids"] ==
            trimmed.tokenizer(texts, padding=True, return_tensors="np")["input_ids"]).all()
    with torch.no_grad():
        logits = trimmed.model(**trimmed.tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert abs(fp32.scores(texts) - torch.softmax(logits, -1).numpy()).max() < 1e-4
    assert [m.name for m in manifest.models] == ["onnx-fp32", "onnx-int8"]
