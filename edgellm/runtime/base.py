"""The backend interface every inference engine implements (ONNX Runtime, OpenVINO)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgellm.errors import BackendError, GenerationError

__all__ = ["Backend", "InputSpec", "KVCacheLayout", "DecodeSession", "BatchDecodeSession", "ArrayDecodeSession"]


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


@dataclass(frozen=True)
class KVCacheLayout:
    """How a decoder graph takes its KV cache (the manifest's `generation.kv_cache` plus the graph's inputs)."""

    past: tuple[str, ...]  # past_key_values.{i}.key / .value in layer order; () = the cache is model state
    present: tuple[str, ...]  # the matching outputs
    num_kv_heads: int
    head_dim: int
    keep_input: str = "num_logits_to_keep"  # scalar input: how many last positions get logits
    position_ids: bool = True  # the graph takes position_ids (the fused graph derives them from the mask)
    shared_buffer: bool = False  # past and present may be one buffer preallocated to `max_length` positions
    max_length: int = 0  # the context the graph was built for

    @classmethod
    def from_generation(cls, generation: Mapping[str, Any], input_names: Sequence[str]) -> KVCacheLayout:
        kv = generation.get("kv_cache") or {}
        names = set(input_names)
        past = tuple(n for n in kv.get("past", []) if n in names)
        return cls(
            past=past,
            present=tuple(kv.get("present", [])) if past else (),
            num_kv_heads=int(kv.get("num_kv_heads", 0)),
            head_dim=int(kv.get("head_dim", 0)),
            keep_input=str(generation.get("logits_to_keep_input", "num_logits_to_keep")),
            position_ids="position_ids" in names,
            shared_buffer=bool(kv.get("shared_buffer", False)),
            max_length=int(generation.get("context_length") or 0),
        )

    def feeds(self, ids: Sequence[int], start: int, keep: int) -> dict[str, np.ndarray]:
        """The non-cache inputs for appending `ids` after `start` cached positions (batch 1)."""
        total = start + len(ids)
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
            self.keep_input: np.array(keep, dtype=np.int64),
        }
        if self.position_ids:
            feeds["position_ids"] = np.arange(start, total, dtype=np.int64)[None, :]
        return feeds


class DecodeSession(ABC):
    """One sequence's decoding state on one backend: append token ids, get the logits of the last positions.
    Sessions are independent of each other (several may run at once, in several threads)."""

    length: int = 0  # positions in the cache

    @abstractmethod
    def feed(self, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        """Append `ids`; return the logits of the last `keep` positions, (keep, V) float32."""

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on, so that the next `feed` continues after the first `length` (a
        shared prompt prefix, computed once). Sessions that cannot raise GenerationError."""
        raise GenerationError(f"{type(self).__name__} cannot truncate its cache")

    def _check_truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise GenerationError(f"cannot truncate a cache of {self.length} positions to {length}")


class BatchDecodeSession(ABC):
    """Several sequences' decoding state, advanced together: `feed` takes one list of new ids per row and returns
    each row's next-token logits (the logits after its last real token), (B, V) float32."""

    lengths: list[int]

    @abstractmethod
    def feed(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Append `rows[b]` to sequence b (every row gets at least one id; a prompt step may give rows of
        different lengths, decode steps give one id each)."""


class ArrayDecodeSession(DecodeSession):
    """The portable session: past / present as numpy arrays through `Backend.run` (any engine)."""

    def __init__(self, backend: Backend, layout: KVCacheLayout) -> None:
        if not layout.past:
            raise BackendError(f"{backend.name} cannot run a decoder whose KV cache is model state "
                               "(a stateful OpenVINO model)")
        self.backend = backend
        self.layout = layout
        self.outputs = ["logits", *layout.present]
        empty = np.zeros((1, layout.num_kv_heads, 0, layout.head_dim), dtype=np.float32)
        self.past: list[np.ndarray] = [empty] * len(layout.past)
        self.length = 0

    def feed(self, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        feeds = self.layout.feeds(ids, self.length, keep)
        feeds.update(zip(self.layout.past, self.past))
        out = self.backend.run(feeds, self.outputs)
        self.past = out[1:]
        self.length += len(ids)
        return out[0][0]

    def truncate(self, length: int) -> None:
        self._check_truncate(length)
        axis = 2  # (batch, kv_heads, positions, head_dim)
        self.past = [np.ascontiguousarray(p[:, :, :length]) if p.shape[axis] > length else p for p in self.past]
        self.length = length


class Backend(ABC):
    """A compiled model on one device. Implementations must be safe to call `run` from several threads."""

    name: str = ""  # "onnxruntime" or "openvino"

    def __init__(self, path: Path, *, device: str, threads: int | None, options: Mapping[str, Any]) -> None:
        self.path = path
        self.requested_device = device
        self.threads = threads
        self.options = dict(options)
        self.selection: dict[str, Any] | None = None  # how the device was chosen (runtime.devices.DeviceChoice)
        self._inputs: list[InputSpec] = []  # filled by the implementation when it compiles the model
        self._outputs: dict[str, tuple[int | None, ...]] = {}  # output name -> declared shape, graph order

    @property
    @abstractmethod
    def device(self) -> str:
        """The device / execution provider really in use, e.g. 'CPUExecutionProvider' or 'CPU'."""

    @property
    def inputs(self) -> list[InputSpec]:
        """The model's inputs in graph order."""
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        """The model's output names in graph order."""
        return list(self._outputs)

    def output_shape(self, name: str) -> tuple[int | None, ...]:
        """Declared shape of an output; dynamic dimensions are None."""
        return self._outputs[name]

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run once; returns the requested outputs (all by default) in that order."""

    def decode_session(self, layout: KVCacheLayout, *, capacity: int | None = None) -> DecodeSession:
        """A new decoding state for a decoder with this KV layout. `capacity`: the most positions the session
        will hold (a preallocated cache is sized to it; default the layout's max_length)."""
        return ArrayDecodeSession(self, layout)

    def batch_decode_session(self, layout: KVCacheLayout, *, batch: int, capacity: int) -> BatchDecodeSession:
        """A decoding state for `batch` sequences advanced together (one graph call per step for all of them);
        GenerationError where this backend / graph cannot (the caller then decodes them one by one)."""
        raise GenerationError(f"{self.name} has no batched decoding for this graph (it needs the fused ONNX Runtime "
                              "decoder with a shared KV buffer)")

    def describe(self) -> dict[str, Any]:
        out = {"backend": self.name, "device": self.device, "threads": self.threads, "path": self.path.name}
        if self.selection is not None:
            out["selection"] = self.selection
        return out
