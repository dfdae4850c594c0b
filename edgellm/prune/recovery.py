"""Recovery after pruning: a short distillation of the pruned model from the unpruned one, with the trainer.

Encoders go through `edgellm.train.distill(teacher, data, config, work_dir, student=pruned)` (soft targets + hard
labels for classifiers, pooled-vector loss for embedders). Causal LMs go through the trainer's loop
(`edgellm.train.loop.train_loop`) with the causal-LM stage's token-level KD (`edgellm.train.causal.causal_kd_loss`:
KL on every real token plus the next-token loss); the best validation perplexity (`lm_perplexity`) is kept. No
second training loop lives here.
"""

from __future__ import annotations

import dataclasses
import logging
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
            "alpha_hidden": config.alpha_hidden, "wall_s": round(time.perf_counter() - started, 1), "train": record,
            "validation": result.metrics.get("validation")}


def _recover_causal_lm(student: Any, teacher: Any, tokenizer: Any, data: Any, config: DistillConfig,
                       work: Path, progress: bool) -> dict[str, Any]:
    """Token-level KD of the pruned decoder from the unpruned one: the causal-LM stage's loss and perplexity, the
    trainer's loop (the causal stage's own verb builds its student from teacher layers, so it is not reused)."""
    import torch

    from edgellm.train.causal import causal_kd_loss, encode_lm, lm_perplexity
    from edgellm.train.data import TokenBatches
    from edgellm.train.loop import LoopOptions, device_for, train_loop

    if tokenizer is None:
        raise DataError("causal-LM recovery needs the tokenizer")
    pad = next((v for v in (tokenizer.pad_token_id, teacher.config.pad_token_id, tokenizer.eos_token_id)
                if isinstance(v, int)), 0)
    length = int(data.max_length or 128)
    ids = encode_lm(tokenizer, data.train.texts, length)
    if not ids:
        raise DataError("recovery needs texts of at least two tokens")
    held = encode_lm(tokenizer, data.validation.texts, length)
    plan = TokenBatches(ids, config.batch_size, config.seed, pad_id=int(pad))
    options = LoopOptions.from_config(config)
    teacher.to(device_for(options)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model: Any, batch: dict[str, Any]) -> Any:
        ids_, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            t_logits = teacher(input_ids=ids_, attention_mask=mask, use_cache=False).logits
        s_logits = model(input_ids=ids_, attention_mask=mask, use_cache=False).logits
        return causal_kd_loss(s_logits, t_logits, ids_, mask, temperature=config.temperature,
                              alpha_kd=config.alpha_kd, alpha_ce=config.alpha_ce)

    def eval_fn(model: Any) -> dict[str, float]:
        return {"perplexity": lm_perplexity(model, held, pad_id=int(pad))["perplexity"]}

    started = time.perf_counter()
    result = train_loop(student, loss_fn, plan, options=options, work_dir=work / "train",
                        eval_fn=eval_fn if held else None, metric="perplexity", higher_is_better=False,
                        fingerprint={"task": "prune-recovery-causal-lm", "rows": len(ids)}, progress=progress,
                        desc="recovery")
    student.eval()
    return {"method": "edgellm.train.loop.train_loop + edgellm.train.causal.causal_kd_loss",
            "epochs": config.epochs, "learning_rate": config.learning_rate, "temperature": config.temperature,
            "alpha_kd": config.alpha_kd, "alpha_ce": config.alpha_ce,
            "wall_s": round(time.perf_counter() - started, 1), "steps": result.steps, "best": result.best}
