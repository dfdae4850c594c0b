"""Calibration data: the task's own texts, tokenized as the runtime tokenizes them, fed exactly as many as asked.

    feeds = text_feeds("art/tokenizer.json", texts, samples=300, max_length=128,
                       input_names=["input_ids", "attention_mask", "token_type_ids"])
    reader = CalibrationReader(feeds)          # ONNX Runtime's CalibrationDataReader protocol; reader.fed counts
    nncf.Dataset(feeds)                        # the same items for NNCF

Torch-free (numpy + tokenizers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from edgellm.errors import DataError

__all__ = ["CalibrationReader", "text_feeds", "check_feeds", "MAX_UNKNOWN_FRACTION"]

log = logging.getLogger(__name__)

# Calibration texts whose tokens are mostly [UNK] are data of another language / tokenizer / task.
MAX_UNKNOWN_FRACTION = 0.5


class CalibrationReader:
    """Yields each calibration feed once, then None: exactly `len(feeds)` samples per pass.

    Implements ONNX Runtime's CalibrationDataReader protocol (`get_next`, `rewind`, iteration); `fed` counts the
    samples handed out since construction (over all passes), `passes` the completed passes.
    """

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = [dict(f) for f in feeds]
        if not self._feeds:
            raise DataError("calibration needs at least one sample; got none")
        self._next = 0
        self.fed = 0
        self.passes = 0

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            if self._next == len(self._feeds):
                self.passes += 1
                self._next += 1  # count a pass once, however often None is asked for
            return None
        feed = self._feeds[self._next]
        self._next += 1
        self.fed += 1
        return feed

    def rewind(self) -> None:
        self._next = 0

    def set_range(self, start_index: int, end_index: int) -> None:  # ORT's optional protocol; not used here
        raise NotImplementedError("CalibrationReader feeds all its samples; slice the feeds instead")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (feed := self.get_next()) is not None:
            yield feed

    @property
    def feeds(self) -> list[dict[str, np.ndarray]]:
        return self._feeds


def check_feeds(feeds: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str]) -> None:
    """DataError unless every feed holds exactly the model's inputs as arrays (calibration for another model)."""
    if not feeds:
        raise DataError("calibration data is empty: give at least one sample")
    wanted = set(input_names)
    for i, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise DataError(f"calibration sample {i} is a {type(feed).__name__}, not a mapping input name -> array")
        got = set(feed)
        if got != wanted:
            raise DataError(
                f"calibration sample {i} has inputs {sorted(got)}, but the model takes {sorted(wanted)}: "
                "the data was made for another model or task"
            )
        for name, value in feed.items():
            if not isinstance(value, np.ndarray):
                raise DataError(f"calibration sample {i} input {name!r} is a {type(value).__name__}, not a numpy array")


def text_feeds(
    tokenizer: str | Path,
    texts: Sequence[str],
    *,
    samples: int,
    max_length: int,
    input_names: Sequence[str],
    input_types: Mapping[str, Any] | None = None,
    static_shape: Sequence[int] | None = None,
    pad_to_longest: bool = False,
    own_texts: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Tokenize the first `samples` texts, one feed per text (batch 1, its own length; or `static_shape`; or all
    padded to the longest, which entropy / percentile calibration needs).

    Raises DataError when there is no text, fewer texts than `samples`, a text that is not a string, or texts the
    tokenizer mostly cannot read (more than half [UNK]: data of another language or task). `own_texts`: the texts
    are the task's own, whose unknown-token rate was reported when the data was read (the pipeline); then that is
    no reason to stop, and the rate is only logged.
    """
    from edgellm.runtime.text import TextEncoder

    if isinstance(texts, (str, bytes)):
        raise DataError("calibration texts must be a list of strings, not one string")
    items = list(texts)
    if not items:
        raise DataError("calibration data is empty: give the task's training texts (at least one)")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise DataError(f"calibration samples must be a positive int, not {samples!r}")
    if len(items) < samples:
        raise DataError(
            f"calibration asks for {samples} samples but the data holds {len(items)} texts; "
            f"lower quantize.calibration_samples to at most {len(items)}"
        )
    chosen = items[:samples]
    bad = [i for i, t in enumerate(chosen) if not isinstance(t, str)]
    if bad:
        raise DataError(f"calibration text {bad[0]} is a {type(chosen[bad[0]]).__name__}, not a str "
                        "(give texts, not (text, label) pairs)")
    encoder = TextEncoder(Path(tokenizer), max_length=max_length)
    _check_known_tokens(encoder.tokenizer, chosen, own_texts=own_texts)
    batch, pad_to = (int(static_shape[0]), int(static_shape[1])) if static_shape else (1, None)
    if pad_to_longest and pad_to is None:
        pad_to = max(encoder.lengths(chosen))
    feeds: list[dict[str, np.ndarray]] = []
    for text in chosen:
        arrays = encoder.encode([text], pad_to=pad_to)
        if batch > 1:
            arrays = {k: np.repeat(v, batch, axis=0) for k, v in arrays.items()}
        feed: dict[str, np.ndarray] = {}
        for name in input_names:
            if name not in arrays:
                raise DataError(f"the model input {name!r} cannot be built from text; calibrate with feeds instead")
            dtype = (input_types or {}).get(name, np.int64)
            feed[name] = arrays[name].astype(dtype, copy=False)
        feeds.append(feed)
    return feeds


def _check_known_tokens(tokenizer: Any, texts: list[str], *, own_texts: bool) -> None:
    from edgellm.vocab import unknown_tokens

    counts = unknown_tokens(tokenizer, texts)
    rate = counts["unknown_rate"]
    if rate <= MAX_UNKNOWN_FRACTION:
        return
    if own_texts:
        log.info("%.0f%% of the calibration tokens are %s: the task's own texts, as reported when the data was read",
                 100 * rate, counts["unk_token"])
        return
    raise DataError(
        f"{rate:.0%} of the calibration tokens are unknown to this model's tokenizer: the texts are "
        "of another language or task; calibrate with the task's own training texts"
    )
