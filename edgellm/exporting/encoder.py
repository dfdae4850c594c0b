"""Export a Hugging Face encoder into an artifact: ONNX FP32 (+ OpenVINO IR), each checked against torch.

    from edgellm.exporting import export
    manifest = export("path/to/model", "artifacts/minilm", task="feature-extraction")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgellm.artifact import ENCODER_TASKS, Manifest, ModelEntry, staging, write_manifest
from edgellm.errors import ConfigError
from edgellm.exporting.onnx import ENCODER_OUTPUTS, cls_only_supported, export_encoder_onnx
from edgellm.exporting.openvino import onnx_to_openvino
from edgellm.exporting.validate import check_against_torch, tokenize_batches
from edgellm.recipe import ExportConfig

__all__ = ["export", "write_encoder_models", "validation_batches", "encoder_manifest", "model_runner", "ENCODER_TASKS",
           "FORMATS", "DEFAULT_ATOL"]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
DEFAULT_ATOL = ExportConfig.atol  # FP32 export vs torch, max abs difference on real text (the recipe's default)


def model_runner(backend: str, path: Path, inputs: list[str], output: str, precision_hint: str | None = None) -> Any:
    """A callable feeds -> output running an exported file through the runtime's own backend classes."""
    if backend == "openvino":
        from edgellm.runtime.openvino import OpenVINOBackend

        engine: Any = OpenVINOBackend(path, device="cpu", threads=None, options={"inference_precision": precision_hint or "f32"})
    else:
        from edgellm.runtime.ort import OrtBackend

        engine = OrtBackend(path, device="cpu", threads=None, options={})

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return engine.run({n: feeds[n] for n in inputs}, [output])[0]

    return run


def validation_batches(tokenizer: Any, texts: Sequence[str], *, max_length: int,
                       static_shape: tuple[int, int] | None = None) -> list[dict[str, np.ndarray]]:
    """Tokenized batches of real text that exports are checked on; full (batch, sequence) ones for a static shape."""
    batches = tokenize_batches(tokenizer, texts, max_length=max_length,
                               pad_to=static_shape[1] if static_shape else None,
                               batch_size=static_shape[0] if static_shape else 8)
    if static_shape:
        batches = [b for b in batches if len(b["input_ids"]) == static_shape[0]]
    return batches


def write_encoder_models(
    model: Any,
    tokenizer: Any,
    folder: Path,
    *,
    task: str,
    max_length: int,
    formats: Sequence[str] = FORMATS,
    texts: Sequence[str],
    atol: float = DEFAULT_ATOL,
    prefix: str = "",
    static_shape: tuple[int, int] | None = None,
    target: str | None = None,
    cls_only: bool = True,
) -> list[ModelEntry]:
    """Write ONNX FP32 (and OpenVINO IR FP32) of `model` into `folder`, each checked against torch on `texts`.

    `cls_only`: a BERT classifier's last layer is exported for the [CLS] position only (`EncoderWrapper`), where
    `cls_only_supported` says it applies; the check against the unwrapped model shows the logits are the same.
    Returns one ModelEntry per file written, with the check's max abs difference in its metrics.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"unknown export format(s) {unknown or formats}; choose from {list(FORMATS)}")
    output = ENCODER_OUTPUTS[task]
    batches = validation_batches(tokenizer, texts, max_length=max_length, static_shape=static_shape)
    sample = {k: _torch(v) for k, v in batches[0].items()} if batches else None
    if sample is None:
        raise ConfigError("no validation texts to trace and check the export with")
    onnx_name = f"{prefix}model.onnx"
    onnx_path = folder / onnx_name
    cls_only = cls_only and cls_only_supported(model, task)  # exact: the check below uses the unwrapped model
    names = export_encoder_onnx(model, onnx_path, task=task, sample=sample, static_shape=static_shape,
                                cls_only=cls_only)
    static = {n: list(static_shape) for n in names} if static_shape else None
    label = f"ONNX FP32 export ({onnx_name})"
    stats = check_against_torch(model, model_runner("onnxruntime", onnx_path, names, output), batches,
                                input_names=names, output=output, atol=atol, label=label)
    entries = [
        ModelEntry(
            name=f"{prefix}onnx-fp32",
            path=onnx_name,
            backend="onnxruntime",
            precision="fp32",
            files=[onnx_name],
            target=target,
            static_shapes=static,
            metrics={"vs_torch": stats, "size_bytes": onnx_path.stat().st_size, "cls_only_last_layer": cls_only},
        )
    ]
    if "openvino" in formats:
        xml = folder / f"{prefix}openvino_model.xml"
        files = onnx_to_openvino(onnx_path, xml)
        stats = check_against_torch(model, model_runner("openvino", xml, names, output, "f32"), batches,
                                    input_names=names, output=output, atol=atol,
                                    label=f"OpenVINO IR FP32 ({xml.name}, f32 precision hint)")
        entries.append(
            ModelEntry(
                name=f"{prefix}openvino-fp32",
                path=xml.name,
                backend="openvino",
                precision="fp32",
                files=files,
                target=target,
                static_shapes=static,
                inference_precision="f32",
                metrics={"vs_torch": stats, "size_bytes": sum((folder / f).stat().st_size for f in files),
                         "cls_only_last_layer": cls_only},
            )
        )
    if "onnx" not in formats:  # OpenVINO was converted from the ONNX file; drop it if not asked for
        onnx_path.unlink()
        entries = entries[1:]
    return entries


def encoder_manifest(
    model: Any,
    *,
    task: str,
    models: list[ModelEntry],
    max_length: int,
    source: str,
    embedding: dict[str, Any] | None = None,
    default_model: str | None = None,
) -> Manifest:
    """Manifest fields an encoder artifact needs, read off the model."""
    from edgellm.exporting.onnx import encoder_input_names
    from edgellm.models import source_record

    cfg = model.config
    labels = None
    if task == "text-classification":
        id2label = getattr(cfg, "id2label", None) or {}
        labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(cfg.num_labels)]
    emb = embedding or {}
    return Manifest(
        task=task,
        models=models,
        default_model=default_model or models[0].name,
        max_length=max_length,
        labels=labels,
        pooling=emb.get("pooling", "mean") if task == "feature-extraction" else None,
        normalize=bool(emb.get("normalize", False)) if task == "feature-extraction" else False,
        inputs=encoder_input_names(model),
        source=source_record(model, source),
    )


def export(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    task: str,
    formats: Sequence[str] | None = None,
    max_length: int | None = None,
    texts: Sequence[str] | None = None,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
    targets: Sequence[str] = (),
    cls_only: bool = True,
) -> Manifest:
    """Export an existing Hugging Face encoder (folder, hub id or embedded alias) into an artifact folder.

    `formats` are generic FP32 models (default: ONNX and OpenVINO when no `targets` are given, else none);
    each of `targets` (device profiles, targets/NAME.yaml) adds one model built for it, named after it.
    The artifact is written atomically: on any error (including an export that differs from torch by more than
    `atol` on real text) nothing is left at `output`, and an existing artifact there is kept. `cls_only`: see
    `write_encoder_models`.
    """
    from edgellm.data import SAMPLE_TEXTS
    from edgellm.exporting.target import export_for_target
    from edgellm.models import default_max_length, load_encoder, load_tokenizer, resolve_model, sentence_embedding_config
    from edgellm.targets import load_target

    if task not in ENCODER_TASKS:
        raise ConfigError(f"export handles encoder tasks {list(ENCODER_TASKS)}, not {task!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ConfigError(f"max_length must be an int >= 2, not {max_length!r}")
    path = resolve_model(model)
    tokenizer = load_tokenizer(path)
    encoder = load_encoder(path, task=task)
    embedding = sentence_embedding_config(path)
    length = max_length or default_max_length(encoder, tokenizer, path)
    if formats is None:
        formats = () if targets else FORMATS
    profiles = [load_target(t) for t in targets]  # every profile checked before any work
    texts = list(texts) if texts else SAMPLE_TEXTS
    with staging(output, overwrite=overwrite) as stage:
        tokenizer.backend_tokenizer.save(str(stage / "tokenizer.json"))
        entries = write_encoder_models(encoder, tokenizer, stage, task=task, max_length=length, formats=formats,
                                       texts=texts, atol=atol, cls_only=cls_only) if formats else []
        for profile in profiles:
            entries += export_for_target(encoder, tokenizer, stage, profile, task=task, max_length=length,
                                         texts=texts, atol=atol, cls_only=cls_only)
        manifest = encoder_manifest(encoder, task=task, models=entries, max_length=length, source=str(model),
                                    embedding=embedding)
        manifest.metrics["export"] = {e.name: e.metrics for e in entries}
        write_manifest(stage, manifest)
    return manifest


def _torch(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))
