"""The backend interface every inference engine implements (ONNX Runtime, OpenVINO)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["Backend", "InputSpec"]


class InputSpec:
    """Name, element type and shape of one model input; dynamic dimensions are None."""

    __slots__ = ("name", "dtype", "shape")

    def __init__(self, name: str, dtype: np.dtype, shape: tuple[int | None, ...]) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.shape = shape

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)

    def __repr__(self) -> str:
        return f"InputSpec({self.name!r}, {self.dtype}, {self.shape})"


class Backend(ABC):
    """A compiled model on one device. Implementations must be safe to call `run` from several threads."""

    name: str = ""  # "onnxruntime" or "openvino"

    def __init__(self, path: Path, *, device: str, threads: int | None, options: Mapping[str, Any]) -> None:
        self.path = path
        self.requested_device = device
        self.threads = threads
        self.options = dict(options)
        self.selection: dict[str, Any] | None = None  # how the device was chosen (runtime.devices.DeviceChoice)

    @property
    @abstractmethod
    def device(self) -> str:
        """The device / execution provider really in use, e.g. 'CPUExecutionProvider' or 'CPU'."""

    @property
    @abstractmethod
    def inputs(self) -> list[InputSpec]:
        """The model's inputs in graph order."""

    @property
    @abstractmethod
    def output_names(self) -> list[str]:
        """The model's output names in graph order."""

    @abstractmethod
    def output_shape(self, name: str) -> tuple[int | None, ...]:
        """Declared shape of an output; dynamic dimensions are None."""

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run once; returns the requested outputs (all by default) in that order."""

    def describe(self) -> dict[str, Any]:
        out = {"backend": self.name, "device": self.device, "threads": self.threads, "path": self.path.name}
        if self.selection is not None:
            out["selection"] = self.selection
        return out
