"""The prune stage on folders: load a model, score on task data, prune, recover, evaluate, save.

    report = prune("teacher/", "pruned/", config=PruneConfig(heads=0.25, ffn=0.4),
                   data=DataConfig(name="movie-reviews"))

The output is a Hugging Face folder (safetensors, tokenizer) plus `prune_report.json`, written atomically.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from edgellm.artifact import TASKS, atomic_folder, check_output
from edgellm.config import jsonable
from edgellm.errors import ConfigError, DataError, ModelError
from edgellm.recipe import DataConfig, DistillConfig, PruneConfig

__all__ = ["prune", "detect_task", "REPORT_FILE"]

log = logging.getLogger(__name__)

REPORT_FILE = "prune_report.json"


def detect_task(path: str) -> str:
    """The task a model folder is for, from its config's architectures."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ModelError(f"cannot read the model config of {path!r}: {exc}") from exc
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return "text-generation"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    return "feature-extraction"


def _load(path: str, task: str, config: PruneConfig | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, TrainedModel or None), checked to be prunable before the tokenizer is read, so that
    an unsupported architecture is named first. Encoders load through the trainer (head and label checks)."""
    from edgellm.models import load_tokenizer
    from edgellm.prune.arch import arch_for, check_supported

    if task == "text-generation":
        from edgellm.models import causal_lm_folder, load_causal_lm

        folder = causal_lm_folder(path)
        model = load_causal_lm(folder)
        arch_for(model)
        return model, load_tokenizer(folder), None
    from transformers import AutoConfig

    from edgellm.train import load_model

    check_supported(AutoConfig.from_pretrained(path), config)
    tm = load_model(path, task=task)
    arch_for(tm.model)
    return tm.model, tm.tokenizer, tm


def _perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int) -> float:
    """The causal-LM stage's perplexity (every token after the first of each text, FP32)."""
    from edgellm.train.causal import encode_lm, lm_perplexity

    pad = next((v for v in (tokenizer.pad_token_id, model.config.pad_token_id, tokenizer.eos_token_id)
                if isinstance(v, int)), 0)
    sequences = encode_lm(tokenizer, texts, max_length)
    if not sequences:
        raise DataError("no texts of two tokens or more to measure perplexity on")
    return float(lm_perplexity(model, sequences, pad_id=int(pad))["perplexity"])


def _metrics(model: Any, tokenizer: Any, tm: Any, data: Any, *, task: str, max_length: int,
             teacher: Any = None) -> dict[str, Any] | None:
    """Validation metrics: accuracy / macro-F1 (classification), agreement with `teacher` (embeddings),
    perplexity (generation); None when the split is too small or an embedder has no teacher to compare with."""
    part = data.validation
    if task == "text-generation":
        return {"perplexity": _perplexity(model, tokenizer, part.texts, max_length=max_length),
                "texts": len(part)} if len(part) else None
    from edgellm.train import evaluate_model

    if task == "feature-extraction" and (teacher is None or len(part) < 3):
        return None
    if not len(part):
        return None
    return evaluate_model(tm, data, split="validation", teacher=teacher)


def _task_data(data: Any, task: str, tm: Any) -> Any:
    """TaskData from a DataConfig / TaskData / None, with class ids in the model head's order."""
    if data is None or (isinstance(data, DataConfig) and data.empty):
        return None
    if isinstance(data, DataConfig):
        from edgellm.data import load_task_data

        data = load_task_data(data, task=task)
    if data.task != task:
        raise DataError(f"the data was loaded for {data.task}, but the model is pruned for {task}")
    if task == "text-classification":
        from edgellm.train.model import check_labels

        names = check_labels(tm, data.labels)
        if names != data.labels:
            data = data.relabel(names)
    return data


SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def prune(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    config: PruneConfig | None = None,
    data: DataConfig | Any | None = None,
    task: str | None = None,
    distill: DistillConfig | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prune the model folder `model` into `output` (HF folder + prune_report.json); returns the report.

    Args:
        data: the task's data (a DataConfig, or a loaded `edgellm.data.TaskData`): the train split scores units
            (Taylor) and feeds recovery; metrics before / after are measured on the validation split.
        task: text-classification, feature-extraction or text-generation; None reads it from the folder.
        distill: learning rate, batch size, temperature and loss weights of recovery (default DistillConfig());
            its epochs are replaced by `config.recovery_epochs`.
        work_dir: recovery checkpoints (default `<output>.work`); rerunning the same call resumes there.
    """
    from edgellm.models import resolve_model
    from edgellm.prune.importance import make_batches
    from edgellm.prune.model import model_stats, prune_model

    config = config or PruneConfig()
    config.validate("prune")
    path = resolve_model(model)
    if task is None:
        task = "text-generation" if str(path).endswith(".gguf") else detect_task(path)
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {list(TASKS)}")
    if config.recovery_alpha_hidden and task == "text-generation":
        raise ConfigError("prune.recovery_alpha_hidden is for encoders; causal-LM recovery uses token-level KD only")
    out = Path(output)
    _check_output(out, overwrite=overwrite)
    net, tokenizer, tm = _load(path, task, config)
    task_data = _task_data(data, task, tm)
    batches = None
    if task_data is not None:
        train = task_data.train
        if not len(train):
            raise DataError("the data's train split is empty: nothing to score units on")
        rows = config.importance_batches * config.batch_size
        batches = make_batches(tokenizer, train.texts[:rows], train.labels[:rows] if train.labels else None,
                               batch_size=config.batch_size, max_length=_max_length(net, config))
    teacher = None
    if task_data is not None:
        teacher = _copy_model(net, tm)
    before = _metrics(net, tokenizer, tm, task_data, task=task, max_length=_max_length(net, config)) \
        if task_data is not None else None
    # structured now; magnitude sparsity after recovery, so that training does not refill the zeros
    report = prune_model(net, config=dataclasses.replace(config, sparsity=0.0), batches=batches)
    recovery = None
    if teacher is not None and config.recovery_epochs > 0:
        from edgellm.prune.recovery import recover

        work = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
        if config.recovery_alpha_hidden is not None:
            distill = dataclasses.replace(distill or DistillConfig(), alpha_hidden=config.recovery_alpha_hidden)
        recovery = recover(net, teacher, task_data, epochs=config.recovery_epochs, work_dir=work / "recovery",
                           distill=distill, tokenizer=tokenizer, progress=progress)
    if config.sparsity > 0:
        from edgellm.prune.unstructured import magnitude_prune

        report.sparsity = magnitude_prune(net, config.sparsity, scope=config.sparsity_scope)
        report.after = model_stats(net)
    after = None
    if task_data is not None:
        after = _metrics(net, tokenizer, tm, task_data, task=task, max_length=_max_length(net, config),
                         teacher=teacher if task == "feature-extraction" else None)
    report.metrics = {"split": "validation" if task_data is not None else None, "before": before, "after": after,
                      "recovery": recovery, "data": task_data.describe() if task_data is not None else None}
    result = report.to_dict()
    result.update({"config": _config_dict(config), "task": task, "source": str(model)})
    source_file = Path(path) / "model.safetensors"
    with _staged_folder(out, overwrite=overwrite) as stage:
        net.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        if task == "feature-extraction":
            _copy_sentence_transformers(Path(path), stage)
        result["size_bytes"] = {
            "before": source_file.stat().st_size if source_file.is_file() else None,
            "after": sum(f.stat().st_size for f in stage.glob("*.safetensors")),
        }
        (stage / REPORT_FILE).write_text(json.dumps(result, indent=2, default=jsonable), encoding="utf-8")
    return result


def _max_length(model: Any, config: PruneConfig) -> int:
    from edgellm.models import max_positions

    positions = max_positions(model.config)
    return min(config.max_length, positions) if positions else config.max_length


def _copy_model(net: Any, tm: Any) -> Any:
    """The unpruned model, kept as the recovery teacher (a TrainedModel for encoders)."""
    clone = copy.deepcopy(net).eval()
    if tm is None:
        return clone
    return dataclasses.replace(tm, model=clone, source=f"{tm.source} (unpruned)")


def _copy_sentence_transformers(src: Path, dst: Path) -> None:
    """Pooling / normalisation files of a sentence-transformers folder, so the embedder keeps its pooling."""
    if not src.is_dir():
        return
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for sub in src.iterdir():
        if sub.is_dir() and sub.name[:1].isdigit() and "_" in sub.name:  # 1_Pooling, 2_Normalize
            shutil.copytree(sub, dst / sub.name)


def _is_prune_output(folder: Path) -> bool:
    return (folder / REPORT_FILE).is_file()


_WHAT = f"a prune output (no {REPORT_FILE})"


def _check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an existing output unless `overwrite`; replace only an earlier prune output (or an empty folder)."""
    check_output(out, overwrite=overwrite, owned=_is_prune_output, what=_WHAT)


def _staged_folder(out: Path, *, overwrite: bool) -> contextlib.AbstractContextManager[Path]:
    """A staging folder beside `out`, renamed into place on success and removed on any error."""
    return atomic_folder(out, overwrite=overwrite, owned=_is_prune_output, what=_WHAT)


def _config_dict(config: PruneConfig) -> dict[str, Any]:
    from edgellm.config import to_dict

    return to_dict(config)


