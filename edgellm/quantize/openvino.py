"""OpenVINO INT8 with NNCF: static (calibrated FakeQuantize), weight-only (`compress_weights`), FP16 IR, and NNCF's
own accuracy control (`quantize_with_accuracy_control`).

    result = quantize_openvino("openvino_model.xml", "openvino_model_int8.xml", mode="static",
                               calibration=feeds, preset="avx512-vnni")

The precision hint for the float parts of an INT8 model is the preset's; it is returned in the settings so that the
manifest records it (ModelEntry.inference_precision) and the runtime compiles with it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from edgellm.config import check_range, suggest
from edgellm.console import muted, no_rich_progress
from edgellm.errors import ConfigError, DataError, QuantizationError, UnsupportedTargetError
from edgellm.quantize.calibration import check_feeds
from edgellm.quantize.presets import Preset, detect_preset, get_preset

__all__ = [
    "OV_MODES",
    "RANGE_ESTIMATORS",
    "OvQuantResult",
    "quantize_openvino",
    "openvino_fp16",
    "openvino_ops",
    "check_openvino_not_quantized",
    "float_matmuls",
]

log = logging.getLogger(__name__)

OV_MODES = ("static", "weight-only")
# edgellm calibration method -> NNCF activation range estimator (NNCF has no entropy / KL calibration; its
# histogram estimator is the closest: it picks the range that minimises the quantization error of the histogram).
RANGE_ESTIMATORS = {"minmax": "MINMAX", "entropy": "HISTOGRAM", "percentile": "MEAN_QUANTILE"}
_LOW_PRECISION = ("i8", "u8", "i4", "u4", "nf4", "f8e4m3", "f8e5m2")


@dataclass
class OvQuantResult:
    files: list[Path]  # xml first, then bin
    settings: dict[str, Any]  # for ModelEntry.quantization
    ops: dict[str, int]  # op type -> count (FakeQuantize, Convert, MatMul ...)
    inference_precision: str  # OpenVINO INFERENCE_PRECISION_HINT to run it with
    excluded: list[str] = field(default_factory=list)
    calibration_fed: int | None = None  # distinct calibration samples NNCF read (it may read each more than once)


def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise UnsupportedTargetError("OpenVINO INT8 needs the openvino package: pip install 'edgellm[full]'") from exc
    return ov


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise UnsupportedTargetError("OpenVINO INT8 needs NNCF: pip install 'edgellm[full]'") from exc
    return nncf


@contextlib.contextmanager
def _nncf_quietly() -> Iterator[None]:
    """NNCF draws a progress bar per algorithm ("Statistics collection", "Applying Smooth Quant", "Applying Fast Bias
    correction") and logs INFO tables (compress_weights' bit-width distribution) on a stdout handler of its own:
    progress reports of a step whose outcome the quantize stage reports itself (op counts, metrics, fall-backs).
    NNCF's warnings still show; -vv brings the rest back."""
    with muted("nncf"), no_rich_progress():
        yield


def openvino_ops(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in model.get_ops():
        kind = op.get_type_name()
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _low_precision_constants(model: Any) -> int:
    n = 0
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in _LOW_PRECISION:
            n += 1
    return n


def check_openvino_not_quantized(model: Any, label: str) -> None:
    fq = openvino_ops(model).get("FakeQuantize", 0)
    low = _low_precision_constants(model)
    if fq or low:
        raise QuantizationError(
            f"{label} is already quantized ({fq} FakeQuantize, {low} int8/int4 weight constants); "
            "quantize its FP32 IR instead"
        )


def float_matmuls(model: Any) -> list[str]:
    """Names of MatMul ops with a constant weight whose inputs carry no quantization (FakeQuantize or int8 weight)."""
    out = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        quantized = False
        weighted = False
        for port in op.inputs():
            src = port.get_source_output().get_node()
            kind = src.get_type_name()
            seen = 0
            while kind in ("Convert", "Multiply", "Subtract", "Reshape", "Transpose") and seen < 6:
                if kind == "Convert" and src.input(0).get_source_output().get_node().get_type_name() == "Constant":
                    const = src.input(0).get_source_output().get_node()
                    if const.get_element_type().get_type_name() in _LOW_PRECISION:
                        quantized = True
                src = src.input(0).get_source_output().get_node()
                kind = src.get_type_name()
                seen += 1
            if kind == "FakeQuantize":
                quantized = True
                src = src.input(0).get_source_output().get_node()
                kind = src.get_type_name()
            if kind == "Constant" or (kind == "Convert" and
                                      src.input(0).get_source_output().get_node().get_type_name() == "Constant"):
                weighted = True
        if weighted and not quantized:
            out.append(op.get_friendly_name())
    return out


def _resolve(preset: str | Preset | None) -> Preset:
    p = preset if isinstance(preset, Preset) else get_preset(preset or detect_preset())
    if "openvino" not in p.backends:
        raise UnsupportedTargetError(f"preset {p.key!r} makes INT8 models for {list(p.backends)}, not OpenVINO")
    return p


def _ignored(nncf: Any, model: Any, exclude: Sequence[str]) -> Any:
    if not exclude:
        return None
    names = {op.get_friendly_name() for op in model.get_ops()}
    unknown = [n for n in exclude if n not in names]
    if unknown:
        raise ConfigError(f"excluded op(s) {unknown} are not in the OpenVINO model{suggest(unknown[0], names)}")
    return nncf.IgnoredScope(names=list(exclude))


def _settings(preset: Preset, mode: str, **extra: Any) -> dict[str, Any]:
    from importlib.metadata import version

    out = {"tool": "nncf", "tool_version": version("nncf"), "mode": mode, "preset": preset.key,
           "target_device": preset.nncf_target}
    out.update(extra)
    return out


def _save(model: Any, dst: Path) -> list[Path]:
    from edgellm.exporting.openvino import save_ir

    _ov()
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_ir(model, dst, compress_to_fp16=False)  # node names renumbered: the same bytes in any process
    return [dst, dst.with_suffix(".bin")]


def compress_weights_int4(src: str | Path, dst: str | Path, *, group_size: int = 64, ratio: float = 1.0,
                          backup_int8: bool = True) -> OvQuantResult:
    """4-bit weights of an OpenVINO IR (NNCF `compress_weights`, INT4_ASYM in groups of `group_size` along the input
    dimension, data-free): `ratio` of the weights get 4 bits, the rest INT8 (`backup_int8`) - NNCF keeps the
    embedding and the last MatMul at 8 bits itself. For decoders (the LLM path); activations stay float."""
    from importlib.metadata import version

    ov, nncf = _ov(), _nncf()
    src, dst = Path(src), Path(dst)
    if not isinstance(group_size, int) or group_size < 8:
        raise ConfigError(f"group_size must be an int >= 8, not {group_size!r}")
    check_range("ratio", ratio, low=0.0, high=1.0, low_open=True)
    try:
        model = ov.Core().read_model(str(src))
    except Exception as exc:
        raise QuantizationError(f"cannot read OpenVINO model {src}: {exc}") from exc
    check_openvino_not_quantized(model, f"OpenVINO model {src.name}")
    backup = nncf.BackupMode.INT8_ASYM if backup_int8 else nncf.BackupMode.NONE
    try:
        with _nncf_quietly():
            out = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group_size,
                                        ratio=ratio, backup_mode=backup)
    except Exception as exc:
        raise QuantizationError(f"NNCF 4-bit compress_weights failed on {src.name} (group_size {group_size} must "
                                f"divide every MatMul's input size): {exc}") from exc
    files = _save(out, dst)
    settings = {"tool": "nncf", "tool_version": version("nncf"), "mode": "weight-only-int4",
                "weights": f"int4_asym, groups of {group_size}", "ratio": ratio,
                "backup": "int8_asym" if backup_int8 else "none", "activations": "float", "data_aware": False}
    return OvQuantResult(files, settings, openvino_ops(out), "f32")


def quantize_openvino(
    src: str | Path,
    dst: str | Path,
    *,
    mode: str = "static",
    preset: str | Preset | None = None,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
    calibration_method: str = "minmax",
    exclude: Sequence[str] = (),
    validation: Sequence[Any] | None = None,
    validation_fn: Callable[[Any, Sequence[Any]], float] | None = None,
    max_drop: float | None = None,
) -> OvQuantResult:
    """INT8 an OpenVINO IR (xml) with NNCF; write `dst` (xml + bin).

    static: `nncf.quantize` (model_type TRANSFORMER, the preset's target device) on exactly `len(calibration)`
    samples. With `max_drop`, `validation` items and `validation_fn(compiled_model, items) -> metric`, NNCF's
    `quantize_with_accuracy_control` instead, which returns ops to float until the drop is within `max_drop`;
    the ops it kept in float are listed in `settings["fell_back"]`.
    weight-only: `nncf.compress_weights` INT8 (asymmetric, per output channel); activations stay float.
    """
    if mode not in OV_MODES:
        raise ConfigError(f"OpenVINO INT8 mode {mode!r} is not one of {list(OV_MODES)}{suggest(str(mode), OV_MODES)}")
    if calibration_method not in RANGE_ESTIMATORS:
        raise ConfigError(f"calibration method {calibration_method!r} is not one of {list(RANGE_ESTIMATORS)}")
    p = _resolve(preset)
    if mode not in p.modes:
        raise UnsupportedTargetError(f"preset {p.key!r} runs INT8 modes {list(p.modes)}, not {mode!r}")
    ov, nncf = _ov(), _nncf()
    src, dst = Path(src), Path(dst)
    try:
        model = ov.Core().read_model(str(src))
    except Exception as exc:
        raise QuantizationError(f"cannot read OpenVINO model {src}: {exc}") from exc
    check_openvino_not_quantized(model, f"OpenVINO model {src.name}")
    ignored = _ignored(nncf, model, exclude)
    if mode == "weight-only":
        try:
            kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
            if ignored is not None:
                kwargs["ignored_scope"] = ignored
            with _nncf_quietly():
                out = nncf.compress_weights(model, **kwargs)
        except Exception as exc:
            raise QuantizationError(f"NNCF compress_weights failed on {src.name}: {exc}") from exc
        files = _save(out, dst)
        settings = _settings(p, mode, weights="int8_asym per channel", activations="float",
                             excluded_nodes=list(exclude))
        return OvQuantResult(files, settings, openvino_ops(out), p.inference_precision, list(exclude))

    if not calibration:
        raise QuantizationError("OpenVINO static INT8 needs calibration data (the task's training texts); got none")
    inputs = [port.get_any_name() for port in model.inputs]
    feeds = list(calibration)
    check_feeds(feeds, inputs)
    seen: set[int] = set()  # NNCF reads the data set once per algorithm (statistics, bias correction ...)

    def count(item: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        seen.add(id(item))
        return item

    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimator = getattr(RangeEstimatorParametersSet, RANGE_ESTIMATORS[calibration_method])
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=estimator)
    common: dict[str, Any] = {
        "model_type": nncf.ModelType.TRANSFORMER,
        "target_device": getattr(nncf.TargetDevice, p.nncf_target),
        "subset_size": len(feeds),
    }
    if ignored is not None:
        common["ignored_scope"] = ignored
    fell_back: list[str] = []
    try:
        with _nncf_quietly():
            if max_drop is None:
                out = nncf.quantize(model, nncf.Dataset(feeds, count), advanced_parameters=advanced, **common)
            else:
                if not validation or validation_fn is None:
                    raise DataError("accuracy control needs validation items and a validation function")
                plain_float = set(float_matmuls(nncf.quantize(model, nncf.Dataset(feeds),
                                                              advanced_parameters=advanced, **common)))
                seen.clear()
                out = nncf.quantize_with_accuracy_control(
                    model, nncf.Dataset(feeds, count), nncf.Dataset(list(validation)), validation_fn,
                    max_drop=float(max_drop), drop_type=nncf.DropType.ABSOLUTE,
                    advanced_quantization_parameters=advanced, **common,
                )
                fell_back = [n for n in float_matmuls(out) if n not in plain_float]
    except (QuantizationError, DataError, ConfigError):
        raise
    except Exception as exc:
        raise QuantizationError(f"NNCF quantize failed on {src.name}: {exc}") from exc
    files = _save(out, dst)
    calib: dict[str, Any] = {"method": calibration_method, "samples": len(feeds),
                             "nncf_range_estimator": RANGE_ESTIMATORS[calibration_method]}
    settings = _settings(p, mode, model_type="TRANSFORMER", calibration=calib,
                         excluded_nodes=list(exclude), weights="int8 per channel (FakeQuantize)",
                         activations="int8 per tensor (FakeQuantize)")
    if max_drop is not None:
        settings["accuracy_control"] = {"tool": "nncf.quantize_with_accuracy_control", "max_drop": float(max_drop),
                                        "fell_back": fell_back}
    return OvQuantResult(files, settings, openvino_ops(out), p.inference_precision,
                         list(exclude) + fell_back, len(seen))


def openvino_fp16(src: str | Path, dst: str | Path) -> list[Path]:
    """The same IR with FP16 weights (half the file); inference precision stays the caller's choice."""
    ov = _ov()
    model = ov.Core().read_model(str(src))
    check_openvino_not_quantized(model, f"OpenVINO model {Path(src).name}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    from edgellm.exporting.openvino import save_ir

    save_ir(model, dst, compress_to_fp16=True)
    return [dst, dst.with_suffix(".bin")]
