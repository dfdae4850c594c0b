"""What a run prints: progress bars only where they can redraw in place, expected third-party chatter silenced.

The CLI calls `configure(verbosity)` once (`-v`, `-vv`). Library code asks `live_progress()` before drawing a bar
and wraps a third-party call whose warnings are known to be harmless in `silence(...)`, `muted(...)`,
`no_rich_progress()` or `no_tqdm_frames(...)`, with a comment at the call saying why they are harmless. At `-vv`
none of them does anything.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from typing import IO, Iterator

__all__ = ["configure", "live_progress", "muted", "no_rich_progress", "no_tqdm_frames", "silence", "verbosity"]


class _MessageFilter(logging.Filter):
    """Drops the records whose message matches `pattern`."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.search(record.getMessage()) is None


_VERBOSITY = {"level": 0}  # set once by configure(); 0 = the CLI's default

# Fine-tuning a teacher gives it a new classification head, which transformers announces on every load ("Some
# weights of BertForSequenceClassification were not initialized ... newly initialized: ['classifier.bias',
# 'classifier.weight'] You should probably TRAIN this model"): that head is exactly what the teacher stage trains.
# A bare encoder saved without its pooler gets a new pooler too, trained with the head. Only a message naming nothing
# but classifier.* / pooler.dense.* is dropped; missing encoder weights still show.
_NEW_HEAD = (r"Some weights of \w+ were not initialized from the model checkpoint at .* and are newly initialized: "
             r"\[(?:'(?:classifier|[\w.]*pooler\.dense)\.\w+'(?:, )?)+\]\s")
_NEW_HEAD_FILTER = _MessageFilter(re.compile(_NEW_HEAD, re.S))


def configure(verbosity: int) -> None:
    """Logging for a CLI run. 0: warnings only; 1 (-v): edgellm's INFO logs; 2+ (-vv): edgellm's DEBUG logs,
    third-party INFO logs, and the warnings and progress displays this module silences."""
    _VERBOSITY["level"] = verbosity
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbosity >= 2 else logging.WARNING)
    logging.getLogger("edgellm").setLevel(
        logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    hf = logging.getLogger("transformers.modeling_utils")  # names the logger only: transformers is not imported
    if verbosity < 2:
        hf.addFilter(_NEW_HEAD_FILTER)  # once: addFilter skips a filter already there
    else:
        hf.removeFilter(_NEW_HEAD_FILTER)


def verbosity() -> int:
    return _VERBOSITY["level"]


def live_progress(stream: IO[str] | None = None) -> bool:
    """Whether a progress bar may draw on `stream` (default stderr): a terminal or a notebook. A log file or CI
    would keep every carriage-return frame."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules



@contextlib.contextmanager
def silence(*patterns: str, loggers: tuple[str, ...] = ("",)) -> Iterator[None]:
    """Drop Python warnings and log records of `loggers` ("" = the root logger) whose message matches one of
    `patterns` (regular expressions, searched), while the block runs. Everything else still shows."""
    if verbosity() >= 2 or not patterns:
        yield
        return
    message_filter = _MessageFilter(re.compile("|".join(f"(?:{p})" for p in patterns), re.S))
    targets = [logging.getLogger(name or None) for name in loggers]
    with warnings.catch_warnings():
        for pattern in patterns:  # warnings' own `message` is matched from the start: allow a prefix
            warnings.filterwarnings("ignore", message=f"(?s).*(?:{pattern})")
        for logger in targets:
            logger.addFilter(message_filter)
        try:
            yield
        finally:
            for logger in targets:
                logger.removeFilter(message_filter)


@contextlib.contextmanager
def muted(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of the loggers `names` to `level` while the block runs (for libraries whose INFO logs are
    progress reports)."""
    if verbosity() >= 2:
        yield
        return
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)


@contextlib.contextmanager
def no_rich_progress() -> Iterator[None]:
    """Hide the progress displays a library draws on rich's global console (NNCF's "Statistics collection" bars)
    while the block runs; the stage line already says what is running."""
    if verbosity() >= 2:
        yield
        return
    import rich  # only callers that use a rich-based library get here

    console = rich.get_console()
    before = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = before


@contextlib.contextmanager
def no_tqdm_frames(module: object) -> Iterator[None]:
    """Give `module.tqdm` (a library module that imported tqdm's class by name) `disable=True` while the block
    runs, unless a bar can redraw in place (`live_progress`): in a log file every frame would stay."""
    if verbosity() >= 2 or live_progress():
        yield
        return
    import functools

    before = getattr(module, "tqdm")
    setattr(module, "tqdm", functools.partial(before, disable=True))
    try:
        yield
    finally:
        setattr(module, "tqdm", before)
