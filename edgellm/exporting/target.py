"""Export one model built the way a device profile asks: engine, float precision, static input shape.

    entries = export_for_target(encoder, tokenizer, stage, "intel-npu", task="text-classification",
                                max_length=128, texts=SAMPLE_TEXTS)
    # [ModelEntry(name="intel-npu", path="intel-npu-openvino_model.xml", precision="fp16",
    #             static_shapes={"input_ids": [1, 128], ...}, target="intel-npu", ...)]

Files are prefixed with the target name, so one artifact holds one model per target. A copy of the profile goes
into the artifact (`NAME-target.json`) so that the runtime can choose a device without the targets/ folder.
INT8 (the profile's `quantization` section) is the quantize stage's job, applied to the model written here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from edgellm.artifact import ModelEntry
from edgellm.errors import ConfigError, ExportError
from edgellm.exporting.encoder import DEFAULT_ATOL, ENCODER_TASKS, model_runner, validation_batches, write_encoder_models
from edgellm.exporting.onnx import ENCODER_OUTPUTS
from edgellm.exporting.openvino import onnx_to_openvino
from edgellm.exporting.validate import check_against_torch
from edgellm.targets import TargetProfile, load_target, profile_file_name

__all__ = ["export_for_target", "target_static_shape", "convert_onnx_fp16", "FP16_ATOL"]

log = logging.getLogger(__name__)

FP16_ATOL = 1e-2  # FP16 weights / compute vs torch FP32, max abs difference on real text


def target_static_shape(profile: TargetProfile, max_length: int) -> tuple[int, int] | None:
    """(batch, sequence) to export for `profile`: its static shape, its sequence cut to `max_length` (no text is
    longer, so more columns would be padding only). A sequence shorter than `max_length` is refused: texts would
    be cut to fewer tokens on this target than on the others."""
    if profile.static is None:
        return None
    batch, seq = profile.static
    if seq < max_length:
        raise ConfigError(
            f"target {profile.name}: static_shape sequence {seq} is shorter than max_length {max_length}; texts "
            f"would lose tokens on this device only. Set max_length <= {seq} or raise the profile's sequence."
        )
    if seq > max_length:
        log.info("target %s: static sequence %d cut to max_length %d", profile.name, seq, max_length)
    return batch, max_length


def convert_onnx_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and compute, inputs and outputs unchanged (int64 ids in, float32 out)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(model, str(dst))
    except Exception as exc:  # onnx / ORT raise assorted classes; one typed error with their text
        raise ExportError(f"FP16 conversion of {src.name} failed: {exc}") from exc


def export_for_target(
    model: Any,
    tokenizer: Any,
    folder: Path,
    profile: TargetProfile | str,
    *,
    task: str,
    max_length: int,
    texts: Sequence[str],
    atol: float = DEFAULT_ATOL,
    cls_only: bool = True,
) -> list[ModelEntry]:
    """Write `model` into `folder` as `profile` needs it, checked against torch on `texts`.

    The FP32 ONNX export is checked at `atol`, the FP16 model at `max(atol, FP16_ATOL)`; a mismatch raises
    ExportMismatchError. Returns the model entry, named after the target.
    """
    profile = load_target(profile)
    if task not in ENCODER_TASKS:
        raise ConfigError(f"target export handles encoder tasks {list(ENCODER_TASKS)}, not {task!r}")
    profile.check_quantization()  # the quantize stage will apply it: refuse a bad preset before any work
    static = target_static_shape(profile, max_length)
    prefix = f"{profile.name}-"
    (entry,) = write_encoder_models(model, tokenizer, folder, task=task, max_length=max_length, formats=["onnx"],
                                    texts=texts, atol=atol, prefix=prefix, static_shape=static, target=profile.name,
                                    cls_only=cls_only)
    onnx_path = folder / entry.path
    fp16 = profile.precision == "fp16"
    if profile.backend == "openvino":
        xml = folder / f"{prefix}openvino_model.xml"
        files = onnx_to_openvino(onnx_path, xml, fp16=fp16)
        onnx_path.unlink()
        entry.path, entry.files, entry.backend = xml.name, files, "openvino"
        entry.inference_precision = profile.inference_precision or "f32"
    elif fp16:
        convert_onnx_fp16(onnx_path, onnx_path)
    if profile.backend == "openvino" or fp16:
        label = f"{profile.name} {profile.precision.upper()} {entry.backend} model ({entry.path})"
        entry.metrics["vs_torch"] = _check(model, tokenizer, folder / entry.path, entry, task=task,
                                           max_length=max_length, texts=texts, static=static,
                                           atol=max(atol, FP16_ATOL) if fp16 else atol, label=label)
    entry.name = profile.name
    entry.precision = profile.precision
    entry.metrics["size_bytes"] = sum((folder / f).stat().st_size for f in entry.files)
    profile_file = profile_file_name(profile.name)
    (folder / profile_file).write_text(json.dumps(profile.to_dict(), indent=2) + "\n", encoding="utf-8")
    entry.files.append(profile_file)
    log.info("target %s: %s %s model %s (static shape %s)", profile.name, entry.backend, entry.precision,
             entry.path, list(static) if static else "none")
    return [entry]


def _check(model: Any, tokenizer: Any, path: Path, entry: ModelEntry, *, task: str, max_length: int,
           texts: Sequence[str], static: tuple[int, int] | None, atol: float, label: str) -> dict[str, float]:
    """The converted model against torch, on the CPU, at the precision hint the target computes in."""
    from edgellm.exporting.onnx import encoder_input_names

    output = ENCODER_OUTPUTS[task]
    names = encoder_input_names(model)
    batches = validation_batches(tokenizer, texts, max_length=max_length, static_shape=static)
    run = model_runner(entry.backend, path, names, output, entry.inference_precision)
    return check_against_torch(model, run, batches, input_names=names, output=output, atol=atol, label=label)
