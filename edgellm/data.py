"""Data sets: the built-in VADER corpora (movie-reviews ...), and sample texts for export checks.

The VADER ground-truth files ship only in the vaderSentiment *source* archive on PyPI. The first use downloads
that archive with pip (a package registry, not a model hub), extracts the corpora into the user's cache folder
(`$EDGELLM_CACHE`, default `~/.cache/edgellm`) atomically, and later uses read the cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edgellm.errors import DataError

__all__ = [
    "cache_dir",
    "vader_folder",
    "load_vader",
    "VADER_CORPORA",
    "SAMPLE_TEXTS",
]

log = logging.getLogger(__name__)

VADER_PACKAGE = "vaderSentiment==3.3.2"
VADER_CORPORA = {
    "movie-reviews": "movieReviewSnippets_GroundTruth.txt",  # 10,605 Rotten Tomatoes sentences
    "tweets": "tweets_GroundTruth.txt",  # 4,200
    "nyt-editorials": "nytEditorialSnippets_GroundTruth.txt",  # 5,190
    "amazon-reviews": "amazonReviewSnippets_GroundTruth.txt",  # 3,708
}

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
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".vader-") as tmp:
        tmpdir = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               VADER_PACKAGE, "-d", str(tmpdir)]
        log.info("downloading the VADER corpora from the package registry: %s", " ".join(cmd[2:]))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(tmpdir.glob("vaderSentiment-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise DataError(
                f"could not download {VADER_PACKAGE} from the package registry (needed for the built-in "
                f"VADER data sets): {proc.stderr.strip()[-400:]}"
            )
        with tarfile.open(archives[0]) as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")), None)
            if member is None:
                raise DataError(f"{archives[0].name} lacks additional_resources/hutto_ICWSM_2014.tar.gz")
            inner_file = outer.extractfile(member)
            if inner_file is None:
                raise DataError(f"cannot read {member.name} from {archives[0].name}")
            with tarfile.open(fileobj=inner_file) as inner:
                stage = tmpdir / "vader"
                stage.mkdir()
                for m in inner.getmembers():
                    name = Path(m.name).name
                    if m.isfile() and name in VADER_CORPORA.values():
                        src = inner.extractfile(m)
                        if src is not None:
                            (stage / name).write_bytes(src.read())
        missing = [f for f in VADER_CORPORA.values() if not (stage / f).is_file()]
        if missing:
            raise DataError(f"the VADER archive lacks {missing}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage, target)
    return target


def load_vader(corpus: str = "movie-reviews") -> list[tuple[str, float]]:
    """(text, mean sentiment score in [-4, 4]) for every sentence of a VADER corpus, in file order."""
    if corpus not in VADER_CORPORA:
        raise DataError(f"unknown VADER corpus {corpus!r}; known: {sorted(VADER_CORPORA)}")
    path = vader_folder() / VADER_CORPORA[corpus]
    rows: list[tuple[str, float]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 3:
            continue
        try:
            score = float(parts[1])
        except ValueError:
            continue
        rows.append(("\t".join(parts[2:]).strip(), score))
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows
