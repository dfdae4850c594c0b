"""ONNX -> OpenVINO IR (xml + bin)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from edgellm.errors import ExportError

__all__ = ["onnx_to_openvino", "save_ir", "canonical_names"]

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
        save_ir(model, xml_path, compress_to_fp16=fp16)
    except Exception as exc:
        raise ExportError(f"OpenVINO could not convert {onnx_path.name}: {exc}") from exc
    return [xml_path.name, xml_path.with_suffix(".bin").name]


def save_ir(model: Any, xml_path: str | Path, *, compress_to_fp16: bool = False) -> None:
    """`openvino.save_model` after `canonical_names`: the same model gives the same xml bytes in any process."""
    import openvino as ov

    canonical_names(model)
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)


def canonical_names(model: Any) -> int:
    """Renumber OpenVINO's automatic node names in graph order; returns how many were renamed.

    Nodes made without a name (by conversion, NNCF, transformations) are called `<Type>_<n>` with n from a counter
    that is global to the process, so the IR of one model differs from run to run with whatever OpenVINO work ran
    before it in the process (a resumed pipeline, a test session). Names are not semantics: inputs and outputs are
    found by tensor name, which this leaves alone, as it leaves Parameter and Result nodes.
    """
    ops = list(model.get_ordered_ops())
    auto = []
    for op in ops:
        kind = op.get_type_name()
        if kind not in ("Parameter", "Result") and re.fullmatch(rf"{re.escape(kind)}_\d+", op.get_friendly_name()):
            auto.append(op)
    taken = {op.get_friendly_name() for op in ops} - {op.get_friendly_name() for op in auto}
    counters: dict[str, int] = {}
    for op in auto:
        kind = op.get_type_name()
        while True:
            n = counters.get(kind, 0)
            counters[kind] = n + 1
            name = f"{kind}_{n}"
            if name not in taken:
                break
        taken.add(name)
        op.set_friendly_name(name)
    return len(auto)
