"""Text input checks and tokenization to numpy, with the `tokenizers` library only."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgellm.errors import ArtifactError, InputError

__all__ = ["MAX_TEXT_CHARS", "MAX_BATCH", "as_texts", "plain_tokenizer", "TextEncoder"]

MAX_TEXT_CHARS = 1_000_000  # longer texts are refused (InputError); shorter ones are truncated to max_length tokens
MAX_BATCH = 100_000  # texts per call; the runtime still runs them in batches of `batch_size`


def plain_tokenizer(tokenizer: Any) -> Any:
    """A copy of a `tokenizers.Tokenizer` (or of a transformers fast tokenizer's) without truncation or padding:
    what counting and packing tokens must see."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def as_texts(texts: str | Sequence[str]) -> list[str]:
    """Check a text or a sequence of texts; return a list. Lone surrogates become U+FFFD."""
    if isinstance(texts, str):
        items = [texts]
    elif isinstance(texts, (bytes, bytearray)):
        raise InputError("texts must be str, not bytes: decode them first (e.g. data.decode('utf-8'))")
    elif isinstance(texts, (Mapping, Set)):  # no order (or keys only): answers could not be matched to texts
        raise InputError(f"texts must be a string or an ordered sequence of strings (list, tuple), not "
                         f"{type(texts).__name__}: answers come back in input order")
    else:
        try:
            items = list(itertools.islice(texts, MAX_BATCH + 1))  # a generator is never read past the limit
        except TypeError as exc:
            raise InputError(f"texts must be a string or a sequence of strings, not {type(texts).__name__}") from exc
    if len(items) > MAX_BATCH:
        count = f"{len(texts):,}" if hasattr(texts, "__len__") else f"more than {MAX_BATCH:,}"
        raise InputError(f"{count} texts in one call; the limit is {MAX_BATCH:,}: split the input")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InputError(f"text {i} is a {type(item).__name__}, not a str: {_short_repr(item)}")
        if len(item) > MAX_TEXT_CHARS:
            raise InputError(
                f"text {i} has {len(item):,} characters; the limit is {MAX_TEXT_CHARS:,} "
                "(texts are truncated to the model's max_length tokens anyway: cut it before calling)"
            )
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates cannot cross into the tokenizer
            item = item.encode("utf-8", "replace").decode("utf-8")
        out.append(item)
    return out


def _short_repr(value: Any) -> str:
    try:
        return f"{value!r:.60}"
    except Exception:  # noqa: BLE001 - a repr that raises (or an int too long to print) must not replace InputError
        return f"<{type(value).__name__}>"


class TextEncoder:
    """Tokenize to padded numpy arrays. Thread-safe: the tokenizer's state is set once, padding is done here."""

    def __init__(self, path: Path, *, max_length: int, pad_id: int | None = None) -> None:
        self.max_length = int(max_length)
        self.tokenizer = _open_tokenizer(path, self.max_length)
        self.pad_id = self._find_pad_id() if pad_id is None else int(pad_id)
        self._encode_batch = _batch_encoder(self.tokenizer)
        self._ascii = _AsciiBertNormalizer.for_tokenizer(self.tokenizer, path, self.max_length)

    def _find_pad_id(self) -> int:
        padding: Any = self.tokenizer.padding
        if padding and padding.get("pad_id") is not None:
            return int(padding["pad_id"])
        for token in ("[PAD]", "<pad>", "<|padding|>", "<|endoftext|>"):
            tid = self.tokenizer.token_to_id(token)
            if tid is not None:
                return int(tid)
        return 0

    def encode(self, texts: list[str], *, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Encode to int64 arrays `input_ids`, `attention_mask`, `token_type_ids`, shape (B, T).

        T is the longest text in the batch, or `pad_to` for static-shape models.
        """
        encodings = self._encodings(texts)
        width = pad_to or max((len(e.ids) for e in encodings), default=1)
        batch = len(encodings)
        ids = np.full((batch, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        types = np.zeros((batch, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = min(len(enc.ids), width)
            ids[row, :n] = enc.ids[:n]
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids[:n]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._encodings(texts)]

    def _encodings(self, texts: list[str]) -> list[Any]:
        return self._ascii.encode_batch(texts, self._encode_batch) if self._ascii else self._encode_batch(texts)


def _open_tokenizer(path: Path, max_length: int) -> Any:
    """The tokenizers file at `path`, truncating at `max_length`, unpadded (padding is done here)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ArtifactError(f"tokenizer file {path.name} cannot be read: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _batch_encoder(tokenizer: Any) -> Any:
    """ids and type ids only: the fast variant skips character offsets (~15% of a 128-token text's encoding)."""
    return getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)


# ASCII characters BERT's normalizer drops (control characters other than tab / newline / return; NUL) or turns into
# a space (tab, newline, return), as tokenizers' BertNormalizer(clean_text=True) does.
_CLEAN_ASCII = {**{c: None for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}, 9: " ", 10: " ", 13: " "}


class _AsciiBertNormalizer:
    """BERT normalization of pure-ASCII text in Python (str.translate + str.lower, about 2 us), then the tokenizer
    without its normalizer; other text (and text naming a special token) goes through the full tokenizer. For ASCII
    the two are the same by construction: accents and CJK characters do not occur, clean_text and lowercase are
    the table above and str.lower (tests/runtime/test_text.py checks it on the test split, control characters and
    special tokens). Saves about a third of the encoding time (57 of 164 us for a 128-token review)."""

    def __init__(self, bare: Any, clean_text: bool, lowercase: bool, raw_tokens: Sequence[str]) -> None:
        self.bare = _batch_encoder(bare)  # the tokenizer without its normalizer
        self.clean_text = clean_text
        self.lowercase = lowercase
        self.raw_tokens = tuple(raw_tokens)  # added tokens matched before normalization ([CLS], [MASK], ...)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, path: Path, max_length: int) -> _AsciiBertNormalizer | None:
        from tokenizers import normalizers

        norm = tokenizer.normalizer
        if not isinstance(norm, normalizers.BertNormalizer):
            return None
        bare = _open_tokenizer(path, max_length)
        bare.normalizer = normalizers.Sequence([])
        raw = [t.content for t in tokenizer.get_added_tokens_decoder().values() if not t.normalized and t.content]
        return cls(bare, bool(norm.clean_text), bool(norm.lowercase), raw)

    def plain(self, text: str) -> bool:
        """Text this path normalizes exactly: ASCII, naming no added token that the full tokenizer matches before
        normalizing ("[MASK]" is the mask token there, but would be lower-cased to "[mask]" here)."""
        return text.isascii() and not any(token in text for token in self.raw_tokens)

    def normalize(self, text: str) -> str:
        if self.clean_text:
            text = text.translate(_CLEAN_ASCII)
        return text.lower() if self.lowercase else text

    def encode_batch(self, texts: list[str], full: Any) -> list[Any]:
        """Encodings of `texts` in order: ASCII ones normalized here, the others by `full` (the whole tokenizer)."""
        plain = [i for i, t in enumerate(texts) if self.plain(t)]
        if len(plain) == len(texts):
            return self.bare([self.normalize(t) for t in texts])
        if not plain:
            return full(texts)
        other = sorted(set(range(len(texts))).difference(plain))
        out: list[Any] = [None] * len(texts)
        for rows, encodings in ((plain, self.bare([self.normalize(texts[i]) for i in plain])),
                                (other, full([texts[i] for i in other]))):
            for i, enc in zip(rows, encodings):
                out[i] = enc
        return out
