"""Generation benchmark: time to first token, prompt and decode tokens/s, perplexity, for any token stream."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgellm.bench.stats import summarize_ms
from edgellm.errors import BackendError, ConfigError, DataError

__all__ = ["TokenStream", "TokenScorer", "measure_generation", "perplexity"]

TokenStream = Callable[[Sequence[int], int], Iterable[int]]  # (prompt ids, max new tokens) -> token ids, streamed
TokenScorer = Callable[[Sequence[int]], np.ndarray]  # ids (T,) -> log-probability of ids[1:] given prefixes, (T-1,)


def measure_generation(stream: TokenStream, prompt_ids: Sequence[int], *, max_new_tokens: int, warmup: int = 1,
                       repeat: int = 3, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time a token stream: time to first token (prompt processing + first token), prompt tokens/s, decode tokens/s
    over the tokens after the first. Medians over `repeat` runs after `warmup` untimed runs."""
    if max_new_tokens < 2:
        raise ConfigError(f"max_new_tokens must be >= 2 to time decoding, not {max_new_tokens!r}")
    if not prompt_ids:
        raise ConfigError("the prompt is empty")
    for _ in range(warmup):
        for _token in stream(prompt_ids, max_new_tokens):
            pass
    first_s, decode_tps, produced = [], [], []
    for _ in range(repeat):
        start = clock()
        first = last = None
        count = 0
        for _token in stream(prompt_ids, max_new_tokens):
            now = clock()
            if first is None:
                first = now
            last = now
            count += 1
        if first is None or last is None:
            raise BackendError("the generator produced no token")
        first_s.append(first - start)
        produced.append(count)
        if count > 1:
            decode_tps.append((count - 1) / max(last - first, 1e-12))
    ttft = summarize_ms(first_s)
    return {
        "prompt_tokens": len(prompt_ids),
        "new_tokens": int(np.median(produced)),
        "time_to_first_token_ms": ttft["p50_ms"],
        "time_to_first_token": ttft,
        "prompt_tokens_per_s": len(prompt_ids) / (ttft["p50_ms"] / 1e3) if ttft["p50_ms"] > 0 else None,
        "decode_tokens_per_s": float(np.median(decode_tps)) if decode_tps else None,
        "repeat": repeat,
    }


def perplexity(score: TokenScorer, sequences: Iterable[Sequence[int]]) -> dict[str, float]:
    """exp(mean negative log-likelihood) over every predicted token of every sequence (natural log)."""
    total, count = 0.0, 0
    for ids in sequences:
        if len(ids) < 2:
            continue
        logp = np.asarray(score(ids), dtype=np.float64)
        if logp.shape != (len(ids) - 1,):
            raise BackendError(f"the scorer returned shape {logp.shape} for {len(ids)} tokens; expected ({len(ids) - 1},)")
        total -= float(logp.sum())
        count += logp.size
    if count == 0:
        raise DataError("no sequence of 2 or more tokens to compute perplexity on")
    return {"perplexity": float(np.exp(total / count)), "nll_per_token": total / count, "tokens": count}

