"""OpenVINO backend (optional extra: `pip install edgellm[openvino]`)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgellm.errors import BackendError, GenerationError, UnsupportedTargetError
from edgellm.runtime.base import ArrayDecodeSession, Backend, DecodeSession, InputSpec, KVCacheLayout

__all__ = ["OpenVINOBackend", "openvino_devices", "DEVICES"]

log = logging.getLogger(__name__)

# edgellm device name -> OpenVINO device name
DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}


def _core() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise UnsupportedTargetError(
            "the OpenVINO backend needs the openvino package: pip install 'edgellm[openvino]'"
        ) from exc
    return ov.Core()


def openvino_devices() -> list[str]:
    """edgellm device names OpenVINO reports on this machine (CPU, GPU, NPU), lower-case."""
    try:
        core = _core()
    except UnsupportedTargetError:
        return []
    return sorted({d.split(".")[0].lower() for d in core.available_devices})


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, path: Path, *, device: str, threads: int | None, options: Mapping[str, Any]) -> None:
        super().__init__(path, device=device, threads=threads, options=options)
        core = _core()
        ov_device = DEVICES.get(device.lower(), device)
        available = list(core.available_devices)
        if ov_device.split(".")[0] not in {d.split(".")[0] for d in available}:
            raise UnsupportedTargetError(
                f"OpenVINO device {device!r} is not available here; available: {available}"
            )
        config: dict[str, Any] = {}
        precision = self.options.get("inference_precision")
        if precision and ov_device.startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads and ov_device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = int(threads)
        config["PERFORMANCE_HINT"] = self.options.get("performance_hint", "LATENCY")
        try:
            model = core.read_model(str(path))
            self._compiled = core.compile_model(model, ov_device, config)
        except Exception as exc:
            raise BackendError(f"OpenVINO could not compile {path.name} for {ov_device}: {exc}") from exc
        self._device = ov_device
        self._config = config
        self._local = threading.local()  # one infer request per thread: requests are not thread-safe
        self._inputs = [
            InputSpec(p.get_any_name(), _ov_dtype(p.get_element_type()), _ov_shape(p.get_partial_shape()))
            for p in self._compiled.inputs
        ]
        self._outputs = {p.get_any_name(): _ov_shape(p.get_partial_shape()) for p in self._compiled.outputs}

    @property
    def device(self) -> str:
        return self._device

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        try:
            result = request.infer(dict(feeds))
        except Exception as exc:
            raise BackendError(f"OpenVINO failed running {self.path.name}: {exc}") from exc
        by_name = {port.get_any_name(): value for port, value in result.items()}
        return [np.array(by_name[n], copy=True) for n in (outputs or self.output_names)]

    def decode_session(self, layout: KVCacheLayout, *, capacity: int | None = None) -> DecodeSession:
        if layout.past:
            return ArrayDecodeSession(self, layout)
        return _StatefulSession(self, layout)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "config": self._config}


class _StatefulSession(DecodeSession):
    """Decoding state held inside an OpenVINO stateful model (KV cache as ReadValue / Assign variables), in an
    infer request of its own: sessions may interleave, in several threads too."""

    def __init__(self, backend: OpenVINOBackend, layout: KVCacheLayout) -> None:
        self.backend, self.layout = backend, layout
        self.request = backend._compiled.create_infer_request()
        self.request.reset_state()
        self.length = 0

    def feed(self, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        try:
            self.request.infer(self.layout.feeds(ids, self.length, keep))
            logits = self.request.get_tensor("logits").data
        except Exception as exc:
            raise BackendError(f"OpenVINO failed running {self.backend.path.name}: {exc}") from exc
        self.length += len(ids)
        return np.array(logits[0], copy=True)

    def truncate(self, length: int) -> None:
        """Each cache variable (batch, kv_heads, positions, head_dim) cut to its first `length` positions."""
        self._check_truncate(length)
        import openvino as ov

        for state in self.request.query_state():
            value = state.state.data
            if value.ndim != 4 or value.shape[2] != self.length:
                raise GenerationError(f"cache variable {state.name} has shape {value.shape}, not (batch, heads, "
                                      f"{self.length}, head_dim)")
            state.state = ov.Tensor(np.ascontiguousarray(value[:, :, :length]))
        self.length = length


def _ov_shape(shape: Any) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in shape)


def _ov_dtype(element_type: Any) -> np.dtype:
    try:
        return np.dtype(element_type.to_dtype())
    except Exception:
        return np.dtype(np.float32)
