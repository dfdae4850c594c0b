"""Models moving between the training stages: loading a teacher (head detection, label mapping) and saving a
Hugging Face folder (safetensors only, tokenizer, label mapping in config.json, training metrics JSON)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgellm.artifact import ENCODER_TASKS, atomic_folder, check_output
from edgellm.config import jsonable
from edgellm.errors import DataError, ModelError

__all__ = ["TrainedModel", "load_model", "head_labels", "match_head_labels", "METRICS_FILE", "publish_folder",
           "check_output_folder", "check_labels"]

log = logging.getLogger(__name__)

METRICS_FILE = "training_metrics.json"  # written beside the weights; marks a folder edgellm may overwrite


@dataclass
class TrainedModel:
    """A torch model with what the next stage needs: tokenizer, task, labels or pooling, metrics, folder."""

    model: Any  # transformers PreTrainedModel (eval mode)
    tokenizer: Any  # fast tokenizer
    task: str  # text-classification or feature-extraction
    labels: list[str] | None = None  # class names by class id
    embedding: dict[str, Any] | None = None  # pooling / normalize for feature-extraction
    source: str = ""  # folder, hub id or alias it was loaded from
    metrics: dict[str, Any] = field(default_factory=dict)  # stage metrics (validation / test, wall time ...)
    folder: Path | None = None  # where it was saved, if it was

    def save(self, folder: str | os.PathLike[str], *, overwrite: bool = False,
             metrics: dict[str, Any] | None = None) -> Path:
        """Write a Hugging Face folder atomically: model.safetensors + config.json (id2label / label2id) +
        tokenizer files (+ sentence-transformers pooling files for embeddings) + training_metrics.json.

        In a data-parallel run (torchrun / accelerate launch) only rank 0 writes."""
        if int(os.environ.get("RANK", "0")) != 0:
            self.folder = Path(folder)
            return self.folder
        with publish_folder(folder, overwrite=overwrite) as stage:
            cfg = self.model.config
            if self.task == "text-classification" and self.labels is not None:
                cfg.id2label = dict(enumerate(self.labels))
                cfg.label2id = {name: i for i, name in enumerate(self.labels)}
                cfg.num_labels = len(self.labels)
            self.model.save_pretrained(stage, safe_serialization=True)
            self.tokenizer.save_pretrained(stage)
            for stray in list(stage.glob("*.bin")) + list(stage.glob("*.pt")):
                stray.unlink()
            if self.task == "feature-extraction":
                _write_sentence_transformers(stage, self.model, self.embedding or {}, self.tokenizer)
            data = {"format": "edgellm-training-metrics", "task": self.task, "labels": self.labels,
                    "source": self.source, **(metrics if metrics is not None else self.metrics)}
            (stage / METRICS_FILE).write_text(json.dumps(data, indent=2, default=jsonable))
        self.folder = Path(folder)
        return self.folder


def _written_by_trainer(folder: Path) -> bool:
    return (folder / METRICS_FILE).is_file()


_WHAT = f"a model folder written by edgellm (no {METRICS_FILE})"


def check_output_folder(output: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse an existing output unless `overwrite`, and never replace a folder edgellm did not write."""
    return check_output(output, overwrite=overwrite, owned=_written_by_trainer, what=_WHAT)


def publish_folder(output: str | os.PathLike[str], *,
                   overwrite: bool = False) -> contextlib.AbstractContextManager[Path]:
    """Yield a staging folder beside `output`; rename it into place on success, remove it on error
    (`edgellm.artifact.atomic_folder`).

    An existing `output` is replaced only with overwrite=True and only if edgellm wrote it (it holds
    training_metrics.json) or it is empty: user folders are never deleted.
    """
    return atomic_folder(output, overwrite=overwrite, owned=_written_by_trainer, what=_WHAT)


def _write_sentence_transformers(folder: Path, model: Any, embedding: dict[str, Any], tokenizer: Any) -> None:
    """modules.json + 1_Pooling/config.json (+ Normalize) so that sentence-transformers and edgellm's exporter
    read the pooling of the saved encoder."""
    pooling = embedding.get("pooling", "mean")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if embedding.get("normalize"):
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": int(model.config.hidden_size),
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))
    max_length = embedding.get("max_length") or getattr(tokenizer, "model_max_length", 512)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": int(min(max_length, 100_000)),
                                                                  "do_lower_case": False}))


def head_labels(config: Any) -> list[str] | None:
    """Class names of a sequence-classification head, or None when the model has no such head."""
    archs = getattr(config, "architectures", None) or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        return None
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(int(config.num_labels))]


def match_head_labels(head: Sequence[str], data_labels: Sequence[str], *, teacher: str = "") -> list[str]:
    """The head's classes, named as the data names them (exact, then case-insensitive, then LABEL_i <-> "i").

    Every data label must match a head class; the head may have more classes than the data uses.
    Raises DataError naming the unknown labels.
    """
    head = [str(h) for h in head]
    data = [str(d) for d in data_labels]
    if set(data) <= set(head):
        return head
    by_fold = {d.casefold(): d for d in data}
    folded = [by_fold.get(h.casefold(), h) for h in head]
    if set(data) <= set(folded):
        return folded
    generic = [f"LABEL_{i}" for i in range(len(head))]
    if head == generic and all(d.isdigit() and int(d) < len(head) for d in data):
        return [str(i) for i in range(len(head))]
    unknown = sorted(set(data) - set(folded))
    raise DataError(f"labels {unknown} in the data are unknown to the classification head of teacher "
                    f"{teacher!r} (its classes: {head}); rename the data's labels to the head's, or start from "
                    "a teacher without a task head")


def load_model(name: Any, *, task: str | None = None, labels: Sequence[str] | None = None, seed: int = 0,
               field_name: str = "teacher") -> TrainedModel:
    """Load a Hugging Face encoder (folder, hub id, embedded alias) with its tokenizer.

    task=None: text-classification when the folder has a classification head, else feature-extraction.
    A classifier without a head gets a new, seeded one for `labels` (to be fine-tuned).
    Errors name `field_name` and the value (e.g. "teacher = 'x': ...").
    """
    import torch
    from transformers import AutoConfig

    from edgellm.models import load_encoder, load_tokenizer, resolve_model, sentence_embedding_config

    if isinstance(name, TrainedModel):
        return name
    try:
        path = resolve_model(name)
        if path.endswith(".gguf"):
            raise ModelError(f"{path} is a GGUF file (a causal LM); this stage needs an encoder folder")
        config = AutoConfig.from_pretrained(path)
    except ModelError as exc:
        raise ModelError(f"{field_name} = {str(name)!r} is not a usable model: {exc}") from exc
    except Exception as exc:  # transformers raises OSError / ValueError for a folder that is not a model
        raise ModelError(f"{field_name} = {str(name)!r} is not a Hugging Face model: {exc}") from exc
    head = head_labels(config)
    task = task or ("text-classification" if head else "feature-extraction")
    if task not in ENCODER_TASKS:
        raise ModelError(f"task {task!r} is not one of {list(ENCODER_TASKS)} for {field_name} = {str(name)!r}")
    try:
        tokenizer = load_tokenizer(path)
        if task == "text-classification" and head is None:
            if not labels:
                raise ModelError(f"{field_name} = {str(name)!r} has no classification head; fine-tune one first "
                                 "(the finetune stage) or give a classifier")
            torch.manual_seed(seed)
            model = load_encoder(path, task=task, num_labels=len(labels))
            model.config.id2label = dict(enumerate(labels))
            model.config.label2id = {n: i for i, n in enumerate(labels)}
            names: list[str] | None = list(labels)
        else:
            model = load_encoder(path, task=task)
            names = head if task == "text-classification" else None
    except ModelError as exc:
        if str(exc).startswith(f"{field_name} = "):
            raise
        raise ModelError(f"{field_name} = {str(name)!r}: {exc}") from exc
    _match_inputs(tokenizer, model)
    embedding = sentence_embedding_config(path) if task == "feature-extraction" else None
    return TrainedModel(model=model, tokenizer=tokenizer, task=task, labels=names, embedding=embedding,
                        source=str(name))


def _match_inputs(tokenizer: Any, model: Any) -> None:
    """The tokenizer returns only the inputs the model's forward takes (a BERT tokenizer beside a DistilBERT:
    no token_type_ids), so that every `model(**tokenizer(texts))` works."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    names = list(getattr(tokenizer, "model_input_names", []) or [])
    if names and any(n not in accepted for n in names):
        tokenizer.model_input_names = [n for n in names if n in accepted]


def check_labels(model: TrainedModel, data_labels: Sequence[str] | None) -> list[str]:
    """Names for the model's classes as the data spells them (see match_head_labels)."""
    if data_labels is None or model.labels is None:
        raise DataError("classification needs labelled data and a model with classes")
    return match_head_labels(model.labels, data_labels, teacher=model.source)
