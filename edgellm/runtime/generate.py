"""Text generation over an exported decoder with a KV cache: sampling, streaming, stop strings, chat templates.

Torch-free (numpy, onnxruntime / openvino, tokenizers, jinja2).

    gen = edgellm.load("artifacts/smollm2-student")
    gen.generate("The capital of France is", max_new_tokens=20)               # greedy by default
    for piece in gen.stream("Tell me a story", temperature=0.8, top_p=0.9, seed=1):
        print(piece, end="", flush=True)
    gen.chat([{"role": "user", "content": "What is 2 + 2?"}])                  # the tokenizer's chat template

Options (keywords of generate / stream / tokens / chat; defaults in `GenerationOptions`):
    max_new_tokens      tokens to generate at most (>= 1)
    temperature         0 = greedy (the default); > 0 samples from softmax(logits / temperature)
    top_k, top_p        sampling filters: the k most likely tokens (0 = off) / the smallest set with mass >= top_p
    repetition_penalty  > 1 discourages tokens already in the prompt or the output (CTRL / transformers rule)
    stop                stop strings: generation ends when one appears; it is not part of the returned text
    stop_token_ids      more stop tokens besides the model's EOS ids (never part of the text)
    seed                seed of the sampler (None: fresh randomness); greedy needs none
    use_cache           False re-runs the whole sequence every step (same tokens, slower; for checking)
    ignore_eos          True keeps generating past the model's EOS tokens (stop_token_ids still stop)

Long prompts: when prompt + max_new_tokens exceed the model's context (`generation.context_length` in the
manifest), the prompt is left-truncated: its oldest tokens are dropped so that the newest fit, and a
`PromptTruncatedWarning` says how many. max_new_tokens itself must be below the context (else InputError).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from edgellm.artifact import Manifest, ModelEntry
from edgellm.errors import ArtifactError, GenerationError, InputError
from edgellm.runtime.base import Backend, DecodeSession, KVCacheLayout
from edgellm.runtime.tasks import EdgeModel

__all__ = [
    "Generator",
    "GenerationOptions",
    "PromptTruncatedWarning",
    "apply_repetition_penalty",
    "filter_top_k",
    "filter_top_p",
    "next_token",
    "render_chat",
]

log = logging.getLogger(__name__)

_STREAM_CONTEXT = 6  # prompt tokens decoded with the output so that the first piece gets its leading space


class PromptTruncatedWarning(UserWarning):
    """The prompt did not fit in the context with max_new_tokens; its oldest tokens were dropped."""


@dataclass
class GenerationOptions:
    """Decoding options; every default is here, once."""

    max_new_tokens: int = 128  # tokens to generate at most
    temperature: float = 0.0  # 0 = greedy; > 0 = sampling at this temperature
    top_k: int = 0  # sample among the k most likely tokens; 0 = no limit
    top_p: float = 1.0  # nucleus: smallest set of tokens whose probability reaches top_p, in (0, 1]
    repetition_penalty: float = 1.0  # > 1 penalises tokens already seen (prompt and output)
    stop: list[str] = field(default_factory=list)  # stop strings (excluded from the text)
    stop_token_ids: list[int] = field(default_factory=list)  # stop tokens besides the model's EOS ids
    seed: int | None = None  # sampler seed; None = fresh entropy
    use_cache: bool = True  # False: recompute the whole sequence each step (no KV cache)
    ignore_eos: bool = False  # True: EOS does not stop generation (fixed-length runs for benchmarks and checks)

    @classmethod
    def build(cls, base: GenerationOptions | None = None, **options: Any) -> GenerationOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InputError(f"unknown generation option(s) {unknown}; valid: {sorted(names)}")
        if isinstance(options.get("stop"), str):
            options["stop"] = [options["stop"]]
        opts = replace(base or cls(), **{k: v for k, v in options.items() if v is not None or k == "seed"})
        opts.check()
        return opts

    def check(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"max_new_tokens must be an int >= 1, not {n!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), not {t!r}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InputError(f"top_k must be an int >= 0 (0 = no limit), not {k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
            raise InputError(f"top_p must be in (0, 1], not {p!r}")
        r = self.repetition_penalty
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise InputError(f"repetition_penalty must be a finite number > 0 (1 = off), not {r!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise InputError(f"stop must be a non-empty string or a list of them, not {self.stop!r}")
        ids = self.stop_token_ids
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InputError(f"stop_token_ids must be a list of ints, not {ids!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InputError(f"seed must be an int >= 0 or None, not {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# -- sampling (pure numpy; the order is transformers': repetition penalty, temperature, top-k, top-p) ---------------


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Divide positive / multiply negative logits of already-seen token ids by `penalty` (CTRL, Keskar 2019)."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    ids = np.unique(seen)
    ids = ids[(ids >= 0) & (ids < out.shape[-1])]
    vals = out[ids]
    out[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (ties at the k-th value kept too); the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits)


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the most likely tokens whose cumulative probability first reaches `p` (at least one token).

    Only the head of the distribution is sorted: candidates are every logit >= the k-th largest (ties included, so
    the order below is the full sort's), k growing until their probability reaches `p` (a full argsort of a 49k
    vocabulary costs milliseconds per sampled token)."""
    if p >= 1.0:
        return logits
    probs = _softmax(logits)
    n = logits.shape[-1]
    k = min(64, n)
    while True:
        kth = np.partition(logits, n - k)[n - k] if k < n else -np.inf
        cand = np.flatnonzero(logits >= kth)
        order = cand[np.lexsort((cand, -logits[cand]))]  # logit descending, then index (a stable sort's order)
        cum = np.cumsum(probs[order])
        if cum[-1] >= p - 1e-9 or cand.size >= n:
            break
        k = min(n, k * 8)
    cut = int(np.searchsorted(cum, p - 1e-9, side="left")) + 1  # tokens needed to reach p (float rounding forgiven)
    out = np.full_like(logits, -np.inf)
    keep = order[: max(1, cut)]
    out[keep] = logits[keep]
    return out


def next_token(logits: np.ndarray, opts: GenerationOptions, rng: np.random.Generator, seen: np.ndarray) -> int:
    """One token from a logits row (V,) under `opts`."""
    if opts.greedy and opts.repetition_penalty == 1.0:
        return int(np.argmax(logits))  # float32 -> float64 is exact: the same token, without the copy
    scores = apply_repetition_penalty(logits.astype(np.float64), seen, opts.repetition_penalty)
    if opts.greedy:
        return int(np.argmax(scores))
    scores = scores / opts.temperature
    scores = filter_top_k(scores, opts.top_k)
    scores = filter_top_p(scores, opts.top_p)
    probs = _softmax(scores)
    return int(rng.choice(probs.shape[-1], p=probs))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis, in float64 (scoring text, comparing models)."""
    x = np.asarray(x, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - (np.log(np.exp(x - top).sum(axis=-1, keepdims=True)) + top)


def token_log_probs(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """log P(targets[t]) under logits row t, float64; logits (T, vocab), len(targets) == T. Only the picked logits
    and each row's log-sum-exp (summed in float64) are formed, not the (T, vocab) log-softmax: 46 ms against 119 ms
    for 255 x 49,152 logits, the same values to 1e-7."""
    x = np.asarray(logits)
    if x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)  # float16 logits are exponentiated in float32
    return x[np.arange(len(targets)), np.asarray(targets)].astype(np.float64) - logsumexp(x)


def logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis, in the input's float precision with the sum in float64: (..., V) ->
    (...,), float64. For scores that need a row's normaliser, not its whole log-softmax."""
    top = x.max(axis=-1, keepdims=True)
    return np.log(np.exp(x - top).sum(axis=-1, dtype=np.float64)) + top[..., 0].astype(np.float64)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x)
    e = np.exp(z)
    return e / e.sum()


# -- chat templates --------------------------------------------------------------------------------------------


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                **variables: Any) -> str:
    """Render a Hugging Face chat template (Jinja) the way transformers does: sandboxed, trim_blocks,
    lstrip_blocks, `raise_exception`, `tojson`, `strftime_now`."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise GenerationError(f"the chat template refused the messages: {message}")

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                **variables)
    except GenerationError:
        raise
    except jinja2.TemplateError as exc:
        raise GenerationError(f"the chat template cannot be rendered: {exc}") from exc


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str) or "content" not in msg:
            raise InputError(f"message {i} must be a dict with a 'role' string and a 'content', not {msg!r:.80}")
        out.append(dict(msg))
    return out


class Generator(EdgeModel):
    """A text-generation artifact, loaded (see the module docstring for the options)."""

    task = "text-generation"

    def __init__(self, folder: Path, manifest: Manifest, entry: ModelEntry, backend: Backend, *,
                 batch_size: int | None = None, defaults: GenerationOptions | None = None) -> None:
        super().__init__(folder, manifest, entry, backend, batch_size=batch_size)
        info = manifest.generation or {}
        if not info:
            raise ArtifactError("text-generation manifest has no `generation` section (re-export the artifact)")
        self.generation = info
        self.tokenizer = self.encoder.tokenizer
        self.tokenizer.no_truncation()
        self.context_length = int(info.get("context_length") or manifest.max_length)
        self.eos_token_ids = [int(i) for i in info.get("eos_token_ids") or []]
        self.chat_template: str | None = info.get("chat_template")
        self.defaults = defaults or GenerationOptions()
        kv = {**(info.get("kv_cache") or {}), **(entry.kv_cache or {})}
        self.kv_layout = KVCacheLayout.from_generation({**info, "kv_cache": kv}, self._input_names)
        self.stateful = not self.kv_layout.past
        if self.stateful and backend.name != "openvino":
            raise ArtifactError(f"model {entry.name!r} has no past_key_values inputs; only OpenVINO runs stateful models")

    # -- tokens ----------------------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"prompt must be a str (or a list of token ids), not {type(text).__name__}")
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text the tokenizer's chat template makes of `messages`."""
        if not self.chat_template:
            raise GenerationError(
                f"the tokenizer of {self.folder.name} has no chat template, so chat() cannot format messages; "
                "call generate() with a prompt you format yourself"
            )
        special = self.generation.get("special_tokens") or {}
        return render_chat(self.chat_template, _check_messages(messages), add_generation_prompt=add_generation_prompt,
                           **{k: v for k, v in special.items() if v is not None})

    def user_prompt_ids(self, text: str) -> list[int]:
        """Token ids of `text` as a user's message: through the chat template when the model has one (which writes
        its own special tokens), else the text as it is."""
        if not self.chat_template:
            return self.encode(text)
        return self.encode(self.apply_chat_template([{"role": "user", "content": text}]), add_special_tokens=False)

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.encode(prompt)
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            ids = [int(i) for i in prompt]
            vocab = int(self.generation.get("vocab_size") or self.tokenizer.get_vocab_size(with_added_tokens=True))
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise InputError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        else:
            raise InputError(f"prompt must be a str or a list of token ids, not {type(prompt).__name__}")
        if not ids:
            raise InputError("the prompt is empty (no tokens): give some text")
        return ids

    def _fit(self, ids: list[int], max_new_tokens: int) -> list[int]:
        room = self.context_length - max_new_tokens
        if room < 1:
            raise InputError(
                f"max_new_tokens = {max_new_tokens} leaves no room for a prompt in the context of "
                f"{self.context_length} tokens; ask for at most {self.context_length - 1}"
            )
        if len(ids) > room:
            warnings.warn(
                f"the prompt has {len(ids)} tokens but the context holds {self.context_length} with "
                f"max_new_tokens = {max_new_tokens}: the oldest {len(ids) - room} prompt tokens were dropped "
                "(left truncation)", PromptTruncatedWarning, stacklevel=3,
            )
            ids = ids[len(ids) - room:]
        return ids

    # -- the loop --------------------------------------------------------------------------------------------

    def tokens(self, prompt: str | Sequence[int], max_new_tokens: int | None = None, **options: Any) -> Iterator[int]:
        """Generated token ids, one at a time (stop tokens are not yielded). `prompt` may be token ids."""
        opts = GenerationOptions.build(self.defaults, max_new_tokens=max_new_tokens, **options)
        ids = self._fit(self._prompt_ids(prompt), opts.max_new_tokens)
        return self._run(ids, opts)

    def _run(self, ids: list[int], opts: GenerationOptions) -> Iterator[int]:
        stops = set(opts.stop_token_ids) | (set() if opts.ignore_eos else set(self.eos_token_ids))
        rng = np.random.default_rng(opts.seed)
        seen = np.asarray(ids, dtype=np.int64)
        session = self._session(min(self.context_length, len(ids) + opts.max_new_tokens)) if opts.use_cache else None
        sequence = list(ids)
        logits = session.feed(ids)[-1] if session is not None else self._full(sequence)
        for _ in range(opts.max_new_tokens):
            token = next_token(logits, opts, rng, seen)
            if token in stops:
                return
            yield token
            sequence.append(token)
            if opts.repetition_penalty != 1.0:
                seen = np.append(seen, token)
            if len(sequence) >= self.context_length:
                return
            logits = session.feed([token])[-1] if session is not None else self._full(sequence)

    def tokens_batch(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int | None = None, *,
                     seeds: Sequence[int | None] | None = None, **options: Any) -> list[list[int]]:
        """Generated token ids for several prompts at once: one graph call per step advances every row (the fused
        ONNX Runtime graph; other models decode the rows one after the other, with the same results). Each row
        samples with its own generator, seeded `seeds[i]` (default: `seed + i`, or fresh entropy without a seed), so
        row i draws what `tokens(prompts[i], seed=seeds[i])` would from the same logits; rows stop on their own."""
        opts = GenerationOptions.build(self.defaults, max_new_tokens=max_new_tokens, **options)
        rows = [self._fit(self._prompt_ids(p), opts.max_new_tokens) for p in prompts]
        if not rows:
            return []
        if seeds is None:
            seeds = [None if opts.seed is None else opts.seed + i for i in range(len(rows))]
        if len(seeds) != len(rows):
            raise InputError(f"{len(seeds)} seeds for {len(rows)} prompts")
        try:
            session = self.backend.batch_decode_session(self.kv_layout, batch=len(rows), capacity=min(
                self.context_length, max(len(r) for r in rows) + opts.max_new_tokens))
        except GenerationError:  # no batched form for this model: the same tokens, one row at a time
            return [list(self._run(r, replace(opts, seed=s))) for r, s in zip(rows, seeds)]
        stops = set(opts.stop_token_ids) | (set() if opts.ignore_eos else set(self.eos_token_ids))
        rngs = [np.random.default_rng(s) for s in seeds]
        seen = [np.asarray(r, dtype=np.int64) for r in rows]
        out: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        logits = session.feed(rows)
        for _ in range(opts.max_new_tokens):
            step = []
            for b in range(len(rows)):
                token = 0 if done[b] else next_token(logits[b], opts, rngs[b], seen[b])
                if not done[b] and token in stops:
                    done[b] = True
                elif not done[b]:
                    out[b].append(token)
                    if opts.repetition_penalty != 1.0:
                        seen[b] = np.append(seen[b], token)
                    done[b] = len(rows[b]) + len(out[b]) >= self.context_length
                step.append([token])  # finished rows feed a placeholder: their outputs are not read
            if all(done):
                break
            logits = session.feed(step)
        return out

    def _full(self, sequence: list[int]) -> np.ndarray:
        """Logits of the last position with no cache: the whole sequence from an empty state."""
        return self._session(len(sequence)).feed(sequence)[-1]

    def _session(self, capacity: int) -> DecodeSession:
        """A fresh decoding state for at most `capacity` positions (the backend's fastest kind)."""
        return self.backend.decode_session(self.kv_layout, capacity=capacity)

    def stream(self, prompt: str | Sequence[int], **options: Any) -> Iterator[str]:
        """The generated text in pieces as it is produced; stop strings end it (and are not yielded)."""
        opts = GenerationOptions.build(self.defaults, **options)
        ids = self._fit(self._prompt_ids(prompt), opts.max_new_tokens)
        return self._stream_text(ids, opts)

    def _stream_text(self, ids: list[int], opts: GenerationOptions) -> Iterator[str]:
        window = ids[-_STREAM_CONTEXT:]
        tokens = list(window)
        prefix, read = 0, len(window)
        pending = ""  # text held back: it could be the start of a stop string
        hold = max((len(s) for s in opts.stop), default=0) - 1
        for token in self._run(ids, opts):
            tokens.append(token)
            before = self.decode(tokens[prefix:read])
            after = self.decode(tokens[prefix:])
            if len(after) <= len(before) or after.endswith("\ufffd"):
                continue  # an incomplete UTF-8 sequence: wait for the next token
            pending += after[len(before):]
            prefix, read = read, len(tokens)
            if opts.stop:
                cut = _find_stop(pending, opts.stop)
                if cut is not None:
                    if pending[:cut]:
                        yield pending[:cut]
                    return
                if hold > 0:
                    safe = _safe_prefix(pending, opts.stop)
                    if safe:
                        yield pending[:safe]
                        pending = pending[safe:]
                    continue
            yield pending
            pending = ""
        tail = self.decode(tokens[prefix:])[len(self.decode(tokens[prefix:read])):] if read < len(tokens) else ""
        pending += tail
        if opts.stop:
            cut = _find_stop(pending, opts.stop)
            pending = pending if cut is None else pending[:cut]
        if pending:
            yield pending

    def generate(self, prompt: str | Sequence[int], **options: Any) -> str:
        """The generated text (the prompt not included)."""
        return "".join(self.stream(prompt, **options))

    def chat(self, messages: Sequence[Mapping[str, Any]], *, stream: bool = False, **options: Any) -> Any:
        """The assistant's reply to `messages` (formatted with the tokenizer's chat template); an iterator of
        text pieces with `stream=True`."""
        opts = GenerationOptions.build(self.defaults, **options)
        text = self.apply_chat_template(messages)
        ids = self.encode(text, add_special_tokens=False)  # the template writes the special tokens itself
        pieces = self._stream_text(self._fit(self._prompt_ids(ids), opts.max_new_tokens), opts)
        return pieces if stream else "".join(pieces)

    def __call__(self, prompt: str | Sequence[int], **options: Any) -> str:  # type: ignore[override]
        return self.generate(prompt, **options)

    # -- scoring -----------------------------------------------------------------------------------------------

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position of `ids`, shape (T, V), float32 (one forward, no cache)."""
        seq = self._prompt_ids(list(ids))
        if len(seq) > self.context_length:
            raise GenerationError(f"{len(seq)} tokens do not fit in the context of {self.context_length}")
        return self._session(len(seq)).feed(seq, keep=len(seq))

    def next_token_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of the token after `ids`, shape (V,), float32 (one forward, no cache)."""
        return self._full(self._scored_prompt(ids))

    def _scored_prompt(self, ids: Sequence[int]) -> list[int]:
        """`ids` checked for next-token scoring: 1 to context_length tokens."""
        seq = self._prompt_ids(list(ids))
        if not seq or len(seq) > self.context_length:
            raise GenerationError(f"{len(seq)} tokens: give 1 to {self.context_length} (the context)")
        return seq

    def next_token_logits_each(self, prompts: Sequence[Sequence[int]]) -> Iterator[np.ndarray]:
        """`next_token_logits` of each prompt in turn, their longest common token prefix computed once (every prompt
        of a fixed template shares its head): one session holds the prefix, each prompt's rest is fed after it and
        then forgotten (`DecodeSession.truncate`). The same logits as one prompt at a time, up to float rounding;
        sessions that cannot truncate score each prompt whole."""
        seqs = [self._scored_prompt(p) for p in prompts]
        if not seqs:
            return
        shared = min(len(s) for s in seqs) - 1  # every prompt keeps at least its last token to feed
        first = seqs[0]
        for seq in seqs[1:]:
            shared = next((i for i in range(shared) if seq[i] != first[i]), shared)
        session = self._session(max(len(s) for s in seqs))
        if shared:
            session.feed(first[:shared])
        for i, seq in enumerate(seqs):
            yield session.feed(seq[shared:])[-1]
            try:
                session.truncate(shared)
            except GenerationError:  # this backend's cache cannot be cut back: the other prompts whole
                yield from (self._full(s) for s in seqs[i + 1:])
                return

    def log_probs(self, ids: Sequence[int]) -> np.ndarray:
        """log P(ids[t] | ids[:t]) for t = 1 .. T-1, shape (T-1,), float64 (one forward over the sequence)."""
        seq = self._prompt_ids(list(ids))
        if len(seq) < 2:
            return np.zeros(0, dtype=np.float64)
        return token_log_probs(self.logits(seq)[:-1], seq[1:])

    def perplexity(self, texts: str | Sequence[str]) -> float:
        """exp(mean NLL per predicted token) over `texts`, each scored on its own (tokenizer's special tokens)."""
        from edgellm.runtime.text import as_texts

        total, count = 0.0, 0
        for text in as_texts(texts):
            ids = self.encode(text)[: self.context_length]
            lp = self.log_probs(ids) if len(ids) > 1 else np.zeros(0)
            total -= float(lp.sum())
            count += lp.size
        if count == 0:
            raise InputError("no text of 2 or more tokens to compute perplexity on")
        return float(np.exp(total / count))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "context_length": self.context_length, "stateful": self.stateful,
                "eos_token_ids": self.eos_token_ids, "chat_template": bool(self.chat_template)}


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _safe_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the prefix of `text` that cannot be the start of a stop string completed by later text."""
    for start in range(len(text)):
        tail = text[start:]
        if any(s.startswith(tail) for s in stops):
            return start
    return len(text)
