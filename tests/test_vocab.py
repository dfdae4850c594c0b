"""Vocabulary trimming on tiny seeded BERTs: same tokens and outputs for seen words, ids remapped everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from edgellm.errors import DataError, ModelError  # noqa: E402
from tests.conftest import needs_minilm  # noqa: E402

TRAIN = [
    "the film was great",
    "a boring plot and bad acting",
    "i love this movie, it was so funny!",
    "the worst script ever. a waste of money",
]
# new sentences made only of words seen in TRAIN
SEEN_WORDS = ["great acting, funny plot", "this was the worst movie", "i love a boring film!", "so bad. ever"]


def load(folder: Path, task: str = "text-classification") -> tuple[Any, Any]:
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    cls = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    return cls.from_pretrained(folder).eval(), tok


def test_seen_words_get_the_same_tokens_and_exactly_the_same_outputs(tiny_classifier_dir: Path) -> None:
    from edgellm.vocab import trim_vocabulary

    model, tok = load(tiny_classifier_dir)
    reference, _ = load(tiny_classifier_dir)
    result = trim_vocabulary(model, tok, TRAIN)
    keep = torch.tensor(result.keep_ids)
    before = tok(SEEN_WORDS, padding=True, return_tensors="pt")
    after = result.tokenizer(SEEN_WORDS, padding=True, return_tensors="pt")
    assert torch.equal(keep[after["input_ids"]], before["input_ids"])  # same tokens, renumbered
    assert after["input_ids"].max() < len(result.keep_ids)
    with torch.no_grad():
        torch.testing.assert_close(model(**after).logits, reference(**before).logits, rtol=0, atol=0)
    assert model.get_input_embeddings().weight.shape == (len(result.keep_ids), 32)
    assert model.config.vocab_size == len(result.keep_ids)


def test_kept_tokens_are_specials_seen_tokens_and_their_characters(tiny_classifier_dir: Path) -> None:
    from edgellm.vocab import trim_vocabulary

    model, tok = load(tiny_classifier_dir)
    vocab = tok.get_vocab()
    seen = {i for text in TRAIN for i in tok(text, add_special_tokens=False)["input_ids"]}
    specials = {vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    chars = {c for i in seen for c in tok.convert_ids_to_tokens(i).removeprefix("##")}
    pieces = {vocab[p] for c in chars for p in (c, "##" + c) if p in vocab}
    words_only = trim_vocabulary(load(tiny_classifier_dir)[0], tok, TRAIN, keep_characters=False)
    assert words_only.keep_ids == sorted(seen | specials)
    result = trim_vocabulary(model, tok, TRAIN)
    assert result.keep_ids == sorted(seen | specials | pieces)
    report = result.report
    assert report["vocab_size_before"] == len(vocab) and report["vocab_size_after"] == len(result.keep_ids)
    assert report["bytes_saved"] == (len(vocab) - len(result.keep_ids)) * 32 * 4  # hidden 32, FP32
    assert report["parameters_before"] - report["parameters_after"] == (len(vocab) - len(result.keep_ids)) * 32


def test_tokenizer_json_ids_are_remapped_and_the_runtime_encoder_agrees(tiny_classifier_dir: Path,
                                                                        tmp_path: Path) -> None:
    from edgellm.runtime.text import TextEncoder
    from edgellm.vocab import trim_vocabulary

    model, tok = load(tiny_classifier_dir)
    result = trim_vocabulary(model, tok, TRAIN)
    new_vocab = result.tokenizer.get_vocab()
    result.tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["model"]["vocab"] == new_vocab
    specials = data["post_processor"]["special_tokens"]
    assert specials["[CLS]"]["ids"] == [new_vocab["[CLS]"]] and specials["[SEP]"]["ids"] == [new_vocab["[SEP]"]]
    assert {t["content"]: t["id"] for t in data["added_tokens"]} == {
        t: new_vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    tok.backend_tokenizer.save(str(tmp_path / "original.json"))
    old = TextEncoder(tmp_path / "original.json", max_length=32).encode(SEEN_WORDS)
    new = TextEncoder(tmp_path / "tokenizer.json", max_length=32).encode(SEEN_WORDS)
    keep = torch.tensor(result.keep_ids).numpy()
    assert (keep[new["input_ids"]] == old["input_ids"]).all()
    assert (new["attention_mask"] == old["attention_mask"]).all()


def test_trimmed_artifact_runs_in_the_runtime_like_the_original_model(tiny_classifier_dir: Path,
                                                                       tmp_path: Path) -> None:
    from edgellm.artifact import write_manifest
    from edgellm.exporting import encoder_manifest, write_encoder_models
    from edgellm.runtime import load as load_artifact
    from edgellm.vocab import trim_vocabulary

    model, tok = load(tiny_classifier_dir)
    reference, _ = load(tiny_classifier_dir)
    result = trim_vocabulary(model, tok, TRAIN)
    folder = tmp_path / "artifact"
    folder.mkdir()
    result.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    entries = write_encoder_models(model, result.tokenizer, folder, task="text-classification", max_length=32,
                                   formats=("onnx",), texts=SEEN_WORDS)
    write_manifest(folder, encoder_manifest(model, task="text-classification", models=entries, max_length=32,
                                            source="tiny"))
    scores = load_artifact(str(folder)).scores(SEEN_WORDS)
    with torch.no_grad():
        expected = torch.softmax(reference(**tok(SEEN_WORDS, padding=True, return_tensors="pt")).logits, -1)
    assert abs(scores - expected.numpy()).max() < 1e-5


def test_unseen_words_fall_back_to_characters_or_unknown_and_coverage_is_reported(tiny_classifier_dir: Path) -> None:
    from edgellm.vocab import trim_vocabulary

    train = ["the film was great"]
    held_out = ["the tile was great", "the movie was great"]  # 'tile': seen characters; 'movie': an unseen 'o'
    model, tok = load(tiny_classifier_dir)
    assert tok.tokenize("tile") == ["t", "##i", "##l", "##e"]
    chars = trim_vocabulary(model, tok, train, held_out=held_out)
    assert chars.tokenizer.tokenize("the tile was great") == ["the", "t", "##i", "##l", "##e", "was", "great"]
    assert chars.tokenizer.tokenize("the movie") == ["the", "[UNK]"]
    held = chars.report["held_out"]
    assert (held["tokens_after"], held["coverage"]) == (11, 10 / 11)  # 7 + 4 tokens, one [UNK]
    assert held["coverage_before"] == 1.0 and held["identical_texts"] == 0.5
    words = trim_vocabulary(load(tiny_classifier_dir)[0], tok, train, keep_characters=False, held_out=held_out)
    assert words.tokenizer.tokenize("the tile") == ["the", "[UNK]"]
    assert words.report["held_out"]["coverage"] == 6 / 8


def test_min_count_drops_rare_tokens(tiny_classifier_dir: Path) -> None:
    from edgellm.vocab import trim_vocabulary

    model, tok = load(tiny_classifier_dir)
    result = trim_vocabulary(model, tok, ["great film", "great plot"], min_count=2, keep_characters=False)
    assert result.tokenizer.convert_ids_to_tokens(list(range(len(result.keep_ids)))) == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "great"]


def test_trimmed_folder_saves_and_reloads(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    from edgellm.vocab import trim_vocabulary

    model, tok = load(tiny_encoder_dir, task="feature-extraction")
    result = trim_vocabulary(model, tok, TRAIN)
    model.save_pretrained(tmp_path / "m")
    result.tokenizer.save_pretrained(tmp_path / "m")
    again_model, again_tok = load(tmp_path / "m", task="feature-extraction")
    assert (tmp_path / "m" / "vocab.txt").read_text().split("\n")[: len(result.keep_ids)] == \
        result.tokenizer.convert_ids_to_tokens(list(range(len(result.keep_ids))))
    feeds = again_tok(SEEN_WORDS, padding=True, return_tensors="pt")
    assert torch.equal(feeds["input_ids"], result.tokenizer(SEEN_WORDS, padding=True, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(again_model(**feeds).last_hidden_state, model(**feeds).last_hidden_state,
                                   rtol=0, atol=0)


# --- bad inputs -------------------------------------------------------------------------------------------------

def test_a_tokenizer_that_cannot_be_trimmed_is_refused_by_name(tiny_classifier_dir: Path) -> None:
    """WordPiece, BPE and Unigram are trimmed (tests/test_families.py); a WordLevel tokenizer is refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from edgellm.vocab import trim_vocabulary

    backend = Tokenizer(models.WordLevel(vocab={"a": 0, "b": 1, "ab": 2, "<unk>": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    model, _ = load(tiny_classifier_dir)
    rows = model.get_input_embeddings().weight.shape[0]
    with pytest.raises(ModelError, match=r"supports \['WordPiece', 'BPE', 'Unigram'\] tokenizers, not 'WordLevel'"):
        trim_vocabulary(model, tok, ["ab a b"])
    assert model.get_input_embeddings().weight.shape[0] == rows  # refused before any change


def test_empty_texts_and_bad_min_count_are_refused(tiny_classifier_dir: Path) -> None:
    from edgellm.vocab import trim_vocabulary

    model, tok = load(tiny_classifier_dir)
    with pytest.raises(DataError, match="needs the task's texts; got none"):
        trim_vocabulary(model, tok, [])
    with pytest.raises(DataError, match="min_count = 0 must be an integer >= 1"):
        trim_vocabulary(model, tok, TRAIN, min_count=0)
    assert model.config.vocab_size == len(tok)  # nothing changed


@needs_minilm
def test_minilm_vocabulary_trimming_is_exact_for_seen_words() -> None:
    """The real 30,522-token WordPiece vocab: words of SAMPLE_TEXTS (many languages, emoji, digits) recombined."""
    import random

    from edgellm.data import SAMPLE_TEXTS
    from edgellm.models import EMBEDDED_ENCODER, load_encoder, load_tokenizer
    from edgellm.vocab import trim_vocabulary

    tok = load_tokenizer(EMBEDDED_ENCODER)
    model = load_encoder(EMBEDDED_ENCODER, task="feature-extraction")
    words = [w for text in SAMPLE_TEXTS for w in text.split()]
    rng = random.Random(0)
    mixed = [" ".join(rng.sample(words, 12)) for _ in range(8)]
    before = tok(mixed, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**before).last_hidden_state
    result = trim_vocabulary(model, tok, SAMPLE_TEXTS, held_out=mixed)
    assert 300 < result.report["vocab_size_after"] < 1500
    held = result.report["held_out"]
    assert held["identical_texts"] == 1.0
    assert held["coverage"] == held["coverage_before"] < 1.0  # the emoji were [UNK] before trimming already
    after = result.tokenizer(mixed, padding=True, return_tensors="pt")
    assert torch.equal(torch.tensor(result.keep_ids)[after["input_ids"]], before["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(**after).last_hidden_state, reference, rtol=0, atol=0)
