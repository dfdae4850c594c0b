"""Check an exported model against torch on real tokenized text; a mismatch is an error, never a warning."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from edgellm.errors import ExportMismatchError

__all__ = ["compare_outputs", "check_against_torch", "tokenize_batches"]

log = logging.getLogger(__name__)


def tokenize_batches(tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 8,
                     pad_to: int | None = None) -> list[dict[str, np.ndarray]]:
    """Real text -> int64 numpy feeds, batched, truncated to `max_length` tokens and padded to the longest.

    With `pad_to` (static-shape models) every batch is padded, or cut, to exactly `pad_to` columns, as the
    runtime does.
    """
    batches = []
    pad_id = int(tokenizer.pad_token_id or 0)
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tokenizer(chunk, truncation=True, max_length=max_length, padding="longest", return_tensors="np")
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
        feeds.setdefault("token_type_ids", np.zeros_like(feeds["input_ids"]))
        if pad_to:
            width = feeds["input_ids"].shape[1]
            feeds = {
                k: np.pad(v[:, :pad_to], ((0, 0), (0, max(pad_to - width, 0))),
                          constant_values=pad_id if k == "input_ids" else 0)
                for k, v in feeds.items()
            }
        batches.append(feeds)
    return batches


def compare_outputs(
    reference: Callable[[dict[str, np.ndarray]], np.ndarray],
    candidate: Callable[[dict[str, np.ndarray]], np.ndarray],
    batches: Sequence[dict[str, np.ndarray]],
    *,
    masked: bool,
) -> dict[str, float]:
    """Max / mean absolute difference of two callables over `batches`.

    With `masked`, only positions whose attention_mask is 1 count (hidden states of padding are not outputs).
    """
    max_diff = 0.0
    total = 0.0
    count = 0
    for feeds in batches:
        ref = np.asarray(reference(feeds), dtype=np.float64)
        out = np.asarray(candidate(feeds), dtype=np.float64)
        if ref.shape != out.shape:
            raise ExportMismatchError(
                f"exported output shape {out.shape} differs from torch's {ref.shape}",
                max_abs_diff=float("inf"),
                tolerance=0.0,
            )
        diff = np.abs(ref - out)
        if masked and diff.ndim == 3:
            diff = diff[feeds["attention_mask"].astype(bool)]
        max_diff = max(max_diff, float(diff.max(initial=0.0)))
        total += float(diff.sum())
        count += diff.size
    return {"max_abs_diff": max_diff, "mean_abs_diff": total / max(count, 1), "samples": int(sum(len(b["input_ids"]) for b in batches))}


def check_against_torch(
    torch_model: Any,
    run_exported: Callable[[dict[str, np.ndarray]], np.ndarray],
    batches: Sequence[dict[str, np.ndarray]],
    *,
    input_names: list[str],
    output: str,
    atol: float,
    label: str,
) -> dict[str, float]:
    """Compare `run_exported` with `torch_model` on `batches`; raise ExportMismatchError over `atol`."""
    import torch

    def reference(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            kwargs = {n: torch.from_numpy(feeds[n]) for n in input_names}
            return torch_model(**kwargs, return_dict=True)[output].float().numpy()

    stats = compare_outputs(reference, run_exported, batches, masked=output == "last_hidden_state")
    stats["tolerance"] = atol
    if not stats["max_abs_diff"] <= atol:  # also catches NaN
        raise ExportMismatchError(
            f"{label} differs from torch by max abs {stats['max_abs_diff']:.3g} on {stats['samples']} real "
            f"texts (tolerance {atol:g}); the export is wrong, not saved",
            max_abs_diff=stats["max_abs_diff"],
            tolerance=atol,
        )
    log.info("%s matches torch: max abs diff %.3g on %d texts", label, stats["max_abs_diff"], stats["samples"])
    return stats
