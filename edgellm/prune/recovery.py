"""Recovery after pruning: a short distillation of the pruned model from the unpruned one, with the trainer.

Encoders go through `edgellm.train.distill(teacher, data, config, work_dir, student=pruned)` (soft targets + hard
labels for classifiers, pooled-vector loss for embedders). Causal LMs go through the trainer's loop
(`edgellm.train.loop.train_loop`) with token-level KD (`edgellm.train.losses.kd_loss` on every real token) plus the
next-token loss; the best validation perplexity is kept. No second training loop lives here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from edgellm.errors import DataError
from edgellm.recipe import DistillConfig

__all__ = ["recover"]

log = logging.getLogger(__name__)


def recover(student: Any, teacher: Any, data: Any, *, epochs: float, work_dir: str | os.PathLike[str],
            distill: DistillConfig | None = None, tokenizer: Any = None, progress: bool = True) -> dict[str, Any]:
    """Train `student` (the pruned model, changed in place) towards `teacher` for `epochs` on `data`'s train split.

    Args:
        teacher: an `edgellm.train.TrainedModel` (encoders) or the unpruned causal LM module.
        data: `edgellm.data.TaskData`.
        distill: learning rate, batch size, temperature and loss weights (its `epochs` is replaced by `epochs`).
        tokenizer: needed for causal LMs.
    Returns the training record (steps, best validation metric, wall time).
    """
    config = dataclasses.replace(distill or DistillConfig(), epochs=float(epochs))
    if not len(data.train):
        raise DataError("recovery needs training text, and the train split is empty")
    if data.task == "text-generation":
        return _recover_causal_lm(student, teacher, tokenizer, data, config, Path(work_dir), progress)
    from edgellm.train import distill as run_distill

    started = time.perf_counter()
    result = run_distill(teacher, data, config, work_dir, student=student, progress=progress)
    record = dict(result.metrics.get("train") or {})
    record.pop("history", None)
    return {"method": "edgellm.train.distill", "epochs": config.epochs, "learning_rate": config.learning_rate,
            "temperature": config.temperature, "alpha_kd": config.alpha_kd, "alpha_ce": config.alpha_ce,
            "wall_s": round(time.perf_counter() - started, 1), "train": record,
            "validation": result.metrics.get("validation")}


def _recover_causal_lm(student: Any, teacher: Any, tokenizer: Any, data: Any, config: DistillConfig,
                       work: Path, progress: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from edgellm.train.data import TokenBatches, encode_texts, eval_batches
    from edgellm.train.loop import LoopOptions, device_for, train_loop
    from edgellm.train.losses import kd_loss

    if tokenizer is None:
        raise DataError("causal-LM recovery needs the tokenizer")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    max_length = int(data.max_length or 128)
    ids = [x for x in encode_texts(tokenizer, data.train.texts, max_length) if len(x) > 1]
    if not ids:
        raise DataError("recovery needs texts of at least two tokens")
    plan = TokenBatches(ids, config.batch_size, config.seed, pad_id=int(pad))
    options = LoopOptions.from_config(config)
    device = device_for(options)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        feeds = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        s_logits = model(**feeds).logits  # (B, T, V)
        mask = batch["attention_mask"].bool()
        parts = {}
        if config.alpha_kd > 0:
            with torch.no_grad():
                t_logits = teacher(**feeds).logits
            parts["kd"] = kd_loss(s_logits[mask], t_logits[mask], config.temperature) * config.alpha_kd
        if config.alpha_ce > 0:
            target = batch["input_ids"][:, 1:].masked_fill(~mask[:, 1:], -100)
            parts["ce"] = F.cross_entropy(s_logits[:, :-1].float().transpose(1, 2), target) * config.alpha_ce
        total = torch.stack(list(parts.values())).sum()
        return total, {k: float(v.detach()) for k, v in parts.items()}

    held = [x for x in encode_texts(tokenizer, data.validation.texts, max_length) if len(x) > 1]

    def eval_fn(model: Any) -> dict[str, float]:
        total, count = 0.0, 0
        dev = next(model.parameters()).device
        for batch in eval_batches(held, batch_size=16, pad_id=int(pad)):
            mask = batch["attention_mask"].to(dev)
            target = batch["input_ids"].to(dev)[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=mask, use_cache=False).logits
            n = int((target != -100).sum())
            total += float(F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target)) * n
            count += n
        return {"perplexity": math.exp(total / max(count, 1))}

    started = time.perf_counter()
    result = train_loop(student, loss_fn, plan, options=options, work_dir=work / "checkpoints",
                        eval_fn=eval_fn if held else None, metric="perplexity", higher_is_better=False,
                        fingerprint={"task": "prune-recovery-causal-lm", "rows": len(ids)}, progress=progress,
                        desc="recovery")
    student.eval()
    return {"method": "edgellm.train.loop.train_loop (token KD)", "epochs": config.epochs,
            "learning_rate": config.learning_rate, "temperature": config.temperature, "alpha_kd": config.alpha_kd,
            "alpha_ce": config.alpha_ce, "wall_s": round(time.perf_counter() - started, 1), "steps": result.steps,
            "best": result.best}
