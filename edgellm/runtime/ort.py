"""ONNX Runtime backend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgellm.errors import BackendError, UnsupportedTargetError
from edgellm.runtime.base import Backend, InputSpec

__all__ = ["OrtBackend", "ort_devices", "PROVIDERS", "CPU_DISABLED_OPTIMIZERS"]

log = logging.getLogger(__name__)

# edgellm device name -> ONNX Runtime execution providers, best first.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider",),
    "gpu": ("CUDAExecutionProvider", "DmlExecutionProvider", "ROCMExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider",),
    "npu": ("QNNExecutionProvider", "OpenVINOExecutionProvider"),
    "qnn": ("QNNExecutionProvider",),
    "coreml": ("CoreMLExecutionProvider",),
}

# Session graph optimizations switched off on the CPU execution provider. SkipLayerNormFusion turns Add + Add +
# LayerNormalization back into SkipLayerNormalization, whose CPU kernel in ONNX Runtime 1.32 is 4.5x slower than the
# parts (248 vs 56 us at 128 x 384, one thread); without it the bias Add folds into DynamicQuantizeMatMul instead
# (edgellm.quantize.ort.split_skip_layer_norm writes the graph for that). Other execution providers keep it.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)

_ORT_TYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
}


def ort_devices() -> list[str]:
    """edgellm device names whose execution provider this ONNX Runtime build has."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [name for name, providers in PROVIDERS.items() if available.intersection(providers)]


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, *, device: str, threads: int | None, options: Mapping[str, Any]) -> None:
        super().__init__(path, device=device, threads=threads, options=options)
        import onnxruntime as ort

        key = device.lower()
        if key not in PROVIDERS:
            raise UnsupportedTargetError(
                f"unknown ONNX Runtime device {device!r}; known: {sorted(PROVIDERS)}; "
                f"available here: {ort_devices()}"
            )
        available = ort.get_available_providers()
        chosen = [p for p in PROVIDERS[key] if p in available]
        if not chosen:
            raise UnsupportedTargetError(
                f"device {device!r} needs one of {list(PROVIDERS[key])}, which this ONNX Runtime lacks; "
                f"available devices: {ort_devices()}"
            )
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        provider_options = self.options.get("provider_options")  # for the first provider (profile's options)
        first: Any = (chosen[0], dict(provider_options)) if provider_options else chosen[0]
        providers: list[Any] = [first, *chosen[1:]] + (["CPUExecutionProvider"] if key != "cpu" else [])
        try:
            disabled = list(CPU_DISABLED_OPTIMIZERS) if key == "cpu" else []
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers,
                                                 disabled_optimizers=disabled)
        except Exception as exc:  # ORT raises its own exception classes; give one typed error with their text
            raise BackendError(f"ONNX Runtime could not load {path.name}: {exc}") from exc
        if self._session.get_providers()[0] not in chosen:  # ORT drops a provider that fails to start, silently
            raise BackendError(
                f"{chosen[0]} is installed but did not start for {path.name} (missing driver or libraries?); "
                f"ONNX Runtime would run it on {self._session.get_providers()[0]} instead"
            )
        self._inputs = [
            InputSpec(i.name, _ORT_TYPES.get(i.type, np.float32), tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self._session.get_inputs()
        ]
        self._outputs = {o.name: tuple(d if isinstance(d, int) else None for d in o.shape) for o in self._session.get_outputs()}

    @property
    def device(self) -> str:
        return self._session.get_providers()[0]

    @property
    def inputs(self) -> list[InputSpec]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def output_shape(self, name: str) -> tuple[int | None, ...]:
        return self._outputs[name]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        try:
            return self._session.run(outputs, dict(feeds))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed running {self.path.name}: {exc}") from exc
