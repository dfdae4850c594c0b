"""Token batches for training and evaluation: tokenized once, dynamic padding, length-bucketed, seeded order."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["encode_texts", "TokenBatches", "eval_batches", "collate", "IGNORE_LABEL"]

IGNORE_LABEL = -100  # label of rows without one (distillation on unlabelled text): CE skips them


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int | None, *,
                 chunk: int = 4096) -> list[list[int]]:
    """Token ids per text (special tokens included, truncated to `max_length` unless it is None, no padding)."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        part = list(texts[start:start + chunk])
        ids.extend(tokenizer(part, truncation=max_length is not None, max_length=max_length)["input_ids"])
    return ids


def collate(input_ids: Sequence[Sequence[int]], rows: Sequence[int], *, pad_id: int,
            labels: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Pad the chosen rows to their longest: input_ids, attention_mask, (labels), index (row numbers)."""
    longest = max(len(input_ids[r]) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        seq = input_ids[r]
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "index": torch.tensor(list(rows), dtype=torch.long)}
    if labels is not None:
        batch["labels"] = torch.tensor([labels[r] for r in rows], dtype=torch.long)
    return batch


@dataclass
class TokenBatches:
    """A BatchPlan over tokenized rows: each epoch a seeded shuffle, then rows grouped by length.

    Rows are shuffled, cut into pools of `bucket` batches, sorted by length inside a pool (little padding), cut
    into batches, and the batches shuffled again; all from numpy's generator seeded with (seed, epoch).
    """

    input_ids: list[list[int]]
    batch_size: int
    seed: int
    labels: list[int] | None = None
    pad_id: int = 0
    bucket: int = 50  # batches per length-sorting pool; 1 = plain shuffled batches
    _len: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._len = math.ceil(len(self.input_ids) / self.batch_size)

    def __len__(self) -> int:
        return self._len

    def epoch(self, epoch: int) -> list[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.input_ids))
        pool = self.batch_size * max(1, self.bucket)
        groups: list[np.ndarray] = []
        lengths = np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))
        for start in range(0, len(order), pool):
            part = order[start:start + pool]
            part = part[np.argsort(-lengths[part], kind="stable")]
            groups.extend(part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size))
        groups = [groups[i] for i in rng.permutation(len(groups))]
        return [collate(self.input_ids, g.tolist(), pad_id=self.pad_id, labels=self.labels) for g in groups]


def eval_batches(input_ids: list[list[int]], *, batch_size: int, pad_id: int
                 ) -> list[dict[str, torch.Tensor]]:
    """Batches sorted by length (fast); each carries `index` so that outputs can be put back in row order."""
    order = sorted(range(len(input_ids)), key=lambda r: len(input_ids[r]))
    return [collate(input_ids, order[i:i + batch_size], pad_id=pad_id) for i in range(0, len(order), batch_size)]
