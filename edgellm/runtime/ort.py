"""ONNX Runtime backend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgellm.errors import BackendError, GenerationError, UnsupportedTargetError
from edgellm.runtime.base import Backend, BatchDecodeSession, DecodeSession, InputSpec, KVCacheLayout

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

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        try:
            return self._session.run(outputs, dict(feeds))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed running {self.path.name}: {exc}") from exc

    def decode_session(self, layout: KVCacheLayout, *, capacity: int | None = None) -> DecodeSession:
        if layout.shared_buffer:
            return _SharedBufferSession(self, layout, capacity or layout.max_length)
        return _OrtValueSession(self, layout)

    def batch_decode_session(self, layout: KVCacheLayout, *, batch: int, capacity: int) -> BatchDecodeSession:
        if not layout.shared_buffer or layout.position_ids:
            return super().batch_decode_session(layout, batch=batch, capacity=capacity)
        return _SharedBufferBatch(self, layout, batch, capacity)


class _OrtValueSession(DecodeSession):
    """A growing KV cache kept as OrtValues: present tensors go straight back in as the next step's past, never
    copied into numpy (only the logits are)."""

    def __init__(self, backend: OrtBackend, layout: KVCacheLayout) -> None:
        from onnxruntime import OrtValue

        if not layout.past:
            raise BackendError("ONNX Runtime needs a decoder with past_key_values inputs (this one keeps its cache "
                               "as model state: an OpenVINO stateful model)")
        self.backend, self.layout = backend, layout
        self.value = OrtValue.ortvalue_from_numpy
        self.outputs = ["logits", *layout.present]
        empty = np.zeros((1, layout.num_kv_heads, 0, layout.head_dim), dtype=np.float32)
        self.past: list[Any] = [self.value(empty) for _ in layout.past]
        self.length = 0

    def feed(self, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        arrays = self.layout.feeds(ids, self.length, keep)  # kept alive here while ONNX Runtime reads them
        feeds = {name: self.value(a) for name, a in arrays.items()}
        feeds.update(zip(self.layout.past, self.past))
        try:
            out = self.backend._session.run_with_ort_values(self.outputs, feeds)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed running {self.backend.path.name}: {exc}") from exc
        self.past = list(out[1:])
        self.length += len(ids)
        return out[0].numpy()[0]

    def truncate(self, length: int) -> None:
        self._check_truncate(length)
        self.past = [self.value(np.ascontiguousarray(p.numpy()[:, :, :length])) for p in self.past]
        self.length = length


def _bind_kv_buffers(backend: OrtBackend, layout: KVCacheLayout, batch: int, capacity: int) -> tuple[Any, Any, Any]:
    """(numpy arrays, OrtValues, IO binding): one zeroed (batch, kv_heads, capacity, head_dim) buffer per cache
    tensor, bound once as both its past input and its present output, with the logits output bound first."""
    from onnxruntime import OrtValue

    if batch < 1 or capacity < 1 or (layout.max_length and capacity > layout.max_length):
        rows = f"{batch} x " if batch != 1 else ""
        raise GenerationError(f"a KV buffer of {rows}{capacity} positions does not fit the model's context of "
                              f"{layout.max_length}")
    shape = (batch, layout.num_kv_heads, capacity, layout.head_dim)
    arrays = [np.zeros(shape, dtype=np.float32) for _ in layout.past]  # pages touched only when written
    buffers = [OrtValue.ortvalue_from_numpy(a) for a in arrays]
    io = backend._session.io_binding()
    io.bind_output("logits")  # first: get_outputs() lists outputs in binding order; ORT allocates it per run
    for past, present, buffer in zip(layout.past, layout.present, buffers):  # bound once, for every step
        io.bind_ortvalue_input(past, buffer)
        io.bind_ortvalue_output(present, buffer)
    return arrays, buffers, io


class _SharedBufferSession(DecodeSession):
    """The KV cache as one buffer per tensor, preallocated to `capacity` positions and bound (IO binding) as both
    the past input and the present output: GroupQueryAttention writes each step's keys / values in place, so no
    step copies the cache. A step that keeps one position's logits (every decode step) writes them into a buffer
    bound once, which is all that comes back: reading ONNX Runtime's own output means wrapping every bound output
    (the logits and 2 per layer), about 0.1 ms per step, 1.5-2% of a 4-bit SmolLM2 step here."""

    def __init__(self, backend: OrtBackend, layout: KVCacheLayout, capacity: int) -> None:
        from onnxruntime import OrtValue

        self.backend, self.layout, self.capacity = backend, layout, capacity
        self._arrays, self._buffers, self._binding = _bind_kv_buffers(backend, layout, 1, capacity)
        self.length = 0
        vocab = (backend._outputs.get("logits") or (None,))[-1]
        self._row = _aligned_empty((1, 1, vocab)) if vocab else None  # the logits of a keep = 1 step
        self._row_value = OrtValue.ortvalue_from_numpy(self._row) if self._row is not None else None
        self._row_bound = False

    def feed(self, ids: Sequence[int], keep: int = 1) -> np.ndarray:
        total = self.length + len(ids)
        if total > self.capacity:
            raise GenerationError(f"the sequence reached {total} tokens; this session's KV buffer holds "
                                  f"{self.capacity} (the context)")
        io = self._binding
        feeds = self.layout.feeds(ids, self.length, keep)  # alive until run_with_iobinding returns
        for name, array in feeds.items():
            io.bind_cpu_input(name, array)
        own = keep == 1 and self._row is not None
        if own and not self._row_bound:
            io.bind_ortvalue_output("logits", self._row_value)
        elif not own:
            io.bind_output("logits")  # ONNX Runtime allocates this step's (1, keep, V), read below
        self._row_bound = own
        try:
            self.backend._session.run_with_iobinding(io)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed running {self.backend.path.name}: {exc}") from exc
        self.length = total
        return self._row[0].copy() if own else io.get_outputs()[0].numpy()[0]

    def truncate(self, length: int) -> None:
        # GroupQueryAttention reads the first `length` positions of the buffer (the attention mask's length) and
        # writes the next feed's keys / values from there on: the later positions need no clearing
        self._check_truncate(length)
        self.length = length


def _aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array whose data starts on a 64-byte boundary (numpy gives 16): a misaligned output
    buffer made the 4-bit LM head's step ~2% slower here."""
    count = int(np.prod(shape))
    raw = np.empty(count + 16, dtype=np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + count].reshape(shape)


class _SharedBufferBatch(BatchDecodeSession):
    """`batch` sequences in one shared KV buffer (batch, kv_heads, capacity, head_dim) per tensor, bound once, for the
    fused graph (GroupQueryAttention takes each row's length from its attention-mask row).

    Rows are right-padded: a prompt step feeds (B, T) ids with row b's real ids first, and its mask row holds ones
    for its real positions only; GroupQueryAttention writes row b's keys / values from its own length on, so the
    padding written at a prompt step is overwritten by the row's next token, and positions (rotary) follow each
    row's own length. Logits come for every fed position; each row's last real one is returned."""

    def __init__(self, backend: OrtBackend, layout: KVCacheLayout, batch: int, capacity: int) -> None:
        self.backend, self.layout, self.capacity = backend, layout, capacity
        self._arrays, self._buffers, self._binding = _bind_kv_buffers(backend, layout, batch, capacity)
        self.lengths = [0] * batch

    def feed(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        if len(rows) != len(self.lengths) or any(len(r) == 0 for r in rows):
            raise GenerationError(f"feed {len(self.lengths)} rows of at least one id each, not {len(rows)}")
        if any(self.lengths) and any(len(r) != len(rows[0]) for r in rows):
            raise GenerationError("after the prompt step every row feeds the same number of ids")
        width = max(len(r) for r in rows)
        totals = [n + len(r) for n, r in zip(self.lengths, rows)]
        if max(totals) > self.capacity:
            raise GenerationError(f"a row reached {max(totals)} tokens; this session's KV buffer holds "
                                  f"{self.capacity}")
        ids = np.zeros((len(rows), width), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = r
        mask = (np.arange(max(totals))[None, :] < np.asarray(totals)[:, None]).astype(np.int64)
        io = self._binding
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        keep = np.array(width, dtype=np.int64)
        io.bind_cpu_input(self.layout.keep_input, keep)
        io.bind_output("logits")
        try:
            self.backend._session.run_with_iobinding(io)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed running {self.backend.path.name}: {exc}") from exc
        logits = io.get_outputs()[0].numpy()  # (B, width, V)
        self.lengths = totals
        return logits[np.arange(len(rows)), [len(r) - 1 for r in rows]]
