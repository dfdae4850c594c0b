"""Generation benchmark: time to first token, prompt and decode tokens/s, perplexity, for any token stream."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from edgellm.bench.stats import SWITCH_PAUSE_S, summarize_ms
from edgellm.errors import BackendError, ConfigError, DataError

__all__ = ["TokenStream", "TokenScorer", "measure_generation", "measure_generation_interleaved", "perplexity",
           "TorchGenerator"]

TokenStream = Callable[[Sequence[int], int], Iterable[int]]  # (prompt ids, max new tokens) -> token ids, streamed
TokenScorer = Callable[[Sequence[int]], np.ndarray]  # ids (T,) -> log-probability of ids[1:] given prefixes, (T-1,)


def _time_stream(stream: TokenStream, prompt_ids: Sequence[int], max_new_tokens: int,
                 clock: Callable[[], float]) -> tuple[float, int, float | None]:
    """One timed generation: (seconds to the first token, tokens produced, decode tokens/s after the first)."""
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
    return first - start, count, (count - 1) / max(last - first, 1e-12) if count > 1 else None


def _generation_record(prompt_ids: Sequence[int], runs: Sequence[tuple[float, int, float | None]]) -> dict[str, Any]:
    ttft = summarize_ms([r[0] for r in runs])
    decode_tps = [r[2] for r in runs if r[2] is not None]
    return {
        "prompt_tokens": len(prompt_ids),
        "new_tokens": int(np.median([r[1] for r in runs])),
        "time_to_first_token_ms": ttft["p50_ms"],
        "time_to_first_token": ttft,
        "prompt_tokens_per_s": len(prompt_ids) / (ttft["p50_ms"] / 1e3) if ttft["p50_ms"] > 0 else None,
        "decode_tokens_per_s": float(np.median(decode_tps)) if decode_tps else None,
        "repeat": len(runs),
    }


def _check_timing(prompt_ids: Sequence[int], max_new_tokens: int) -> None:
    if max_new_tokens < 2:
        raise ConfigError(f"max_new_tokens must be >= 2 to time decoding, not {max_new_tokens!r}")
    if not prompt_ids:
        raise ConfigError("the prompt is empty")


def measure_generation(stream: TokenStream, prompt_ids: Sequence[int], *, max_new_tokens: int, warmup: int = 1,
                       repeat: int = 3, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time a token stream: time to first token (prompt processing + first token), prompt tokens/s, decode tokens/s
    over the tokens after the first. Medians over `repeat` runs after `warmup` untimed runs."""
    _check_timing(prompt_ids, max_new_tokens)
    for _ in range(warmup):
        for _token in stream(prompt_ids, max_new_tokens):
            pass
    return _generation_record(prompt_ids, [_time_stream(stream, prompt_ids, max_new_tokens, clock)
                                           for _ in range(repeat)])


def measure_generation_interleaved(streams: Mapping[str, TokenStream], prompt_ids: Sequence[int], *,
                                   max_new_tokens: int, warmup: int = 1, repeat: int = 3,
                                   clock: Callable[[], float] = time.perf_counter,
                                   pause_s: float = SWITCH_PAUSE_S) -> dict[str, dict[str, Any]]:
    """`measure_generation` for several streams in the same window: each round times every stream once, in turn
    (the order reversed every other round), so a machine whose speed drifts slows them alike and their ratios
    hold; each timed run starts after a `pause_s` sleep (the previous stream's threads stop spinning). name -> the
    same record as `measure_generation`."""
    _check_timing(prompt_ids, max_new_tokens)
    names = list(streams)
    for _ in range(warmup):
        for name in names:
            for _token in streams[name](prompt_ids, max_new_tokens):
                pass
    runs: dict[str, list[tuple[float, int, float | None]]] = {name: [] for name in names}
    for round_ in range(repeat):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            time.sleep(pause_s)
            runs[name].append(_time_stream(streams[name], prompt_ids, max_new_tokens, clock))
    return {name: _generation_record(prompt_ids, runs[name]) for name in names}


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



class TorchGenerator:
    """The reference generator: a Hugging Face causal LM in FP32 PyTorch, `generate` (greedy) streamed token by
    token, and next-token log-probabilities from one forward pass. `path` is a model folder or a .gguf file."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self._threads_before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))
        where = Path(path)
        kwargs: dict[str, Any] = {}
        if where.suffix == ".gguf":
            kwargs, where = {"gguf_file": where.name}, where.parent
        self.hf_tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        self.tokenizer = self.hf_tokenizer.backend_tokenizer
        self.model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs).eval()
        self.info = {"backend": "pytorch", "threads": threads or torch.get_num_threads(), "path": str(path)}

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        """Greedy tokens after `prompt_ids`, exactly `max_new_tokens` of them (end-of-sequence does not stop it)."""
        torch = self._torch
        from transformers.generation.streamers import BaseStreamer

        tokens: queue.Queue[int | None] = queue.Queue()

        class _Tokens(BaseStreamer):
            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() hands the prompt over first
                    self.prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    tokens.put(int(token))

            def end(self) -> None:
                tokens.put(None)

        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        errors: list[BaseException] = []
        pad = self.hf_tokenizer.pad_token_id
        pad = pad if pad is not None else self.hf_tokenizer.eos_token_id

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                        min_new_tokens=max_new_tokens, do_sample=False, streamer=_Tokens(),
                                        pad_token_id=pad)
            except BaseException as exc:  # re-raised in the consumer's thread below
                errors.append(exc)
                tokens.put(None)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while (token := tokens.get()) is not None:
            yield token
        worker.join()
        if errors:
            raise BackendError(f"transformers generate failed: {errors[0]}") from errors[0]

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t = 1 .. T-1 (natural log), shape (T-1,)."""
        torch = self._torch
        tensor = torch.tensor([list(ids)], dtype=torch.long)
        with torch.inference_mode():
            logits = self.model(tensor, use_cache=False).logits[0, :-1].float()  # (T-1, vocab)
            logp = torch.log_softmax(logits, dim=-1).gather(1, tensor[0, 1:, None])[:, 0]
        return logp.numpy().astype(np.float64)

    def close(self) -> None:
        self._torch.set_num_threads(self._threads_before)
        del self.model
