"""ONNX -> OpenVINO IR (xml + bin)."""

from __future__ import annotations

import logging
from pathlib import Path

from edgellm.errors import ExportError

__all__ = ["onnx_to_openvino"]

log = logging.getLogger(__name__)


def onnx_to_openvino(onnx_path: Path, xml_path: Path, *, fp16: bool = False) -> list[str]:
    """Convert an ONNX file to IR. Weights stay FP32 unless `fp16` (OpenVINO's own default compresses them).

    Returns the files written, relative to xml_path's folder.
    """
    try:
        import openvino as ov
    except ImportError as exc:
        raise ExportError("OpenVINO export needs the openvino package: pip install 'edgellm[openvino]'") from exc
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    except Exception as exc:
        raise ExportError(f"OpenVINO could not convert {onnx_path.name}: {exc}") from exc
    return [xml_path.name, xml_path.with_suffix(".bin").name]
