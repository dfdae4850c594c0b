"""A small, fixed training run on a tiny BERT, shared by the resume and data-parallel tests.

Run as a script (in a subprocess) it can kill itself with SIGKILL after a given step, or run under
`python -m torch.distributed.run`; rank 0 then writes the final weights to OUT.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

STEPS_OPTIONS = dict(epochs=1.5, learning_rate=1e-3, warmup_ratio=0.1, eval_every=4, seed=5, precision="fp32",
                     device="cpu")


def setup(model_dir: str, data_file: str, *, dropout: bool = True) -> tuple[Any, Any, Callable, Callable]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig
    from edgellm.train.data import TokenBatches, encode_texts, eval_batches

    config = AutoConfig.from_pretrained(model_dir)
    if not dropout:
        config.hidden_dropout_prob = 0.0
        config.attention_probs_dropout_prob = 0.0
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, config=config)
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = load_task_data(DataConfig(path=data_file))
    plan = TokenBatches(encode_texts(tok, data.train.texts, 32), 16, seed=3, labels=data.train.labels)
    val = eval_batches(encode_texts(tok, data.validation.texts, 32), batch_size=64, pad_id=0)
    gold = torch.tensor(data.validation.labels)

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits, batch["labels"])

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        correct = 0
        for b in val:
            pred = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1)
            correct += int((pred == gold[b["index"]]).sum())
        return {"accuracy": 100.0 * correct / len(gold)}

    return model, plan, loss_fn, eval_fn


def run(model_dir: str, data_file: str, work: str, *, on_step: Callable | None = None, dropout: bool = True,
        **overrides: Any) -> Any:
    from edgellm.train.loop import LoopOptions, train_loop

    model, plan, loss_fn, eval_fn = setup(model_dir, data_file, dropout=dropout)
    options = LoopOptions(**{**STEPS_OPTIONS, **overrides})
    return train_loop(model, loss_fn, plan, options=options, work_dir=work, eval_fn=eval_fn, on_step=on_step,
                      progress=False)


def main() -> None:
    model_dir, data_file, work, mode, out = sys.argv[1:6]
    if mode.startswith("kill@"):
        at = int(mode[5:])

        def on_step(step: int, logs: dict) -> None:
            if step == at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real kill -9

        run(model_dir, data_file, work, on_step=on_step)
    elif mode == "ddp":
        from safetensors.torch import save_model

        result = run(model_dir, data_file, work, dropout=False)
        if int(os.environ.get("RANK", "0")) == 0:
            save_model(result.model, out)
            Path(out + ".world").write_text(str(result.world_size))


if __name__ == "__main__":
    main()
