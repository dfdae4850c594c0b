"""Metrics on known samples."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm.errors import DataError
from edgellm.evaluate import classification_metrics, embedding_agreement, spearman, zero_shot_sentiment


def test_accuracy_and_macro_f1_by_hand() -> None:
    # class 0: tp=2 fp=1 fn=0 -> f1 = 4/5; class 1: tp=1 fp=0 fn=1 -> f1 = 2/3
    m = classification_metrics([0, 0, 1, 0], [0, 0, 1, 1])
    assert m["accuracy"] == 75.0
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2 * 100)
    assert m["examples"] == 4


def test_spearman_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks x = [1.5, 1.5, 3], y = [1, 2, 3] -> pearson of ranks = 0.8660254
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-7)


def test_embedding_agreement_identical_is_perfect() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(10, 8))
    pairs = np.array([[i, j] for i in range(10) for j in range(i + 1, 10)])
    out = embedding_agreement(e, e * 3.0, pairs)
    assert out["spearman"] == pytest.approx(1.0) and out["mean_cosine_to_reference"] == pytest.approx(1.0)
    assert out["pairs"] == 45


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="3 predictions for 2 labels"):
        classification_metrics([0, 1, 1], [0, 1])
    with pytest.raises(DataError, match="no examples"):
        classification_metrics([], [])
    with pytest.raises(DataError, match=">= 2 values"):
        spearman([1], [1])


class _BiasedJudge:
    """A stand-in text generator that always leans to " positive" (logit +3) and reads "good" / "bad" as +-1 on top:
    its plain answer is always positive, its judgement of the texts is perfect."""

    chat_template = None
    tokens = {"negative": 1, "positive": 2}

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self.tokens.get(text.strip().lower(), 3)]

    def user_prompt_ids(self, prompt: str) -> list[int]:
        self.prompts.append(prompt)
        return [len(self.prompts) - 1]

    def next_token_logits(self, ids: list[int]) -> np.ndarray:
        review = self.prompts[ids[-1]].rsplit("Review: ", 1)[1]
        logits = np.zeros(4)
        logits[2] = 3.0 + ("good" in review) - ("bad" in review)
        return logits


def test_zero_shot_sentiment_calibration_removes_the_prior_answer() -> None:
    texts, labels = ["good fun", "bad plot", "a good cast", "so bad"], [1, 0, 1, 0]
    judge = _BiasedJudge()
    got = zero_shot_sentiment(judge, texts, labels, ["negative", "positive"])
    assert got["accuracy_uncalibrated"] == 50.0 and got["accuracy"] == 100.0 and got["auc"] == 1.0
    assert got["content_free_scores"][1] - got["content_free_scores"][0] == pytest.approx(3.0, abs=0.05)
    assert judge.prompts[-3:] == [f"Is the following movie review positive or negative? Answer with one word.\n\n"
                                  f"Review: {t}\nAnswer:" for t in ("N/A", "", "[MASK]")]
    flipped = zero_shot_sentiment(_BiasedJudge(), texts, [0, 1, 0, 1], ["negative", "positive"])
    assert flipped["accuracy"] == 0.0 and flipped["auc"] == 0.0
    one_class = zero_shot_sentiment(_BiasedJudge(), texts[:1], [1], ["negative", "positive"])
    assert "auc" not in one_class and one_class["examples"] == 1
    with pytest.raises(DataError, match="2 texts for 1 labels"):
        zero_shot_sentiment(_BiasedJudge(), texts[:2], [1], ["negative", "positive"])


def test_lm_agreement_equals_the_float64_definition() -> None:
    from edgellm.evaluate import lm_agreement
    from edgellm.runtime.generate import log_softmax

    rng = np.random.default_rng(0)
    logits = {"ref": (rng.standard_normal((2, 9, 40)) * 5).astype(np.float32)}
    logits["got"] = logits["ref"] + (rng.standard_normal((2, 9, 40)) * 0.7).astype(np.float32)

    class StandIn:  # .logits(ids) -> (T, V): sequence i gets the i-th block of logits
        def __init__(self, name: str) -> None:
            self.name = name

        def logits(self, ids: list[int]) -> np.ndarray:
            return logits[self.name][ids[0]]

    sequences = [[0] * 9, [1] * 9, [0]]  # the one-token sequence is skipped
    got = lm_agreement(StandIn("ref"), StandIn("got"), sequences)
    ref, cand = log_softmax(logits["ref"].astype(np.float64)), log_softmax(logits["got"].astype(np.float64))
    want_kl = float((np.exp(ref) * (ref - cand)).sum()) / 18
    want_top1 = float((ref.argmax(-1) == cand.argmax(-1)).mean())
    assert got["positions"] == 18 and 0.0 < want_top1 < 1.0
    assert got["kl"] == pytest.approx(want_kl, rel=1e-6) and got["top1_agreement"] == pytest.approx(want_top1)
