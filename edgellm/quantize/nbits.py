"""Block-wise 4-bit and 8-bit weights for ONNX Runtime: every MatMul with a float weight -> MatMulNBits.

    quantize_nbits(src, dst, bits=4, block_size=32, method="gptq", calibration=token_id_sequences)

Each weight (K, N) is cut into blocks of `block_size` along K; a block stores `bits`-bit integers q with one float
scale s and one integer zero point z (asymmetric) or the middle value (symmetric): w ~ s * (q - z). ONNX Runtime's
MatMulNBits reads them directly; with accuracy_level 4 it quantizes the activations to int8 per block and runs
integer dot products (AVX-512 VNNI / AMX), which is what makes it the fast path on CPUs (measured here: a
576 x 1536 product at 4 bits runs in 21 us at level 4 and 70 us at level 0; 8 bits 34 us vs 630 us).

Methods:
    rtn   round to nearest, with the clipping range of each block searched for the least squared error
          (a block's min / max shrunk by up to 25%, as llama.cpp's k-quants and HQQ do); data-free.
    gptq  GPTQ (Frantar et al. 2022): columns quantized one after another, each one's rounding error spread over
          the columns not yet quantized through the inverse Hessian H = X^T X of the layer's real inputs, which
          are collected by running the FP32 graph itself on `calibration` token sequences. Data-aware.

The lm_head (the largest matrix of a small LM) can keep more bits (`lm_head_bits`), for all of its output rows or,
with `lm_head_rows`, for the first n token ids only: a BPE vocabulary lists its most frequent tokens first (the
first 16,384 of SmolLM2's 49,152 ids are about 90% of the tokens of English text here), so those rows keep 8 bits
in one MatMulNBits and the rare rest takes 4 bits in another, their logits concatenated. The embedding table is
read by a Gather, not a MatMul: it is stored as FP16 (`embedding="fp16"`) or left FP32. All choices land in the
result's `settings`, which the manifest records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgellm.errors import ConfigError, QuantizationError

__all__ = ["NBITS_METHODS", "NBitsQuantizer", "NBitsResult", "quantize_nbits", "quantize_blocks", "pack_matmul_nbits",
           "gptq_blocks"]

log = logging.getLogger(__name__)

NBITS_METHODS = ("rtn", "gptq")
EMBEDDING_FORMATS = ("fp32", "fp16")
_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # fractions of a block's range tried by the clipping search
_GPTQ_BLOCK = 128  # columns updated together (lazy batch updates)
_GPTQ_DAMP = 0.01  # Hessian damping, as a fraction of its mean diagonal


@dataclass
class NBitsResult:
    path: Path
    settings: dict[str, Any]
    ops: dict[str, int] = field(default_factory=dict)


# -- the quantization grid -----------------------------------------------------------------------------------------


def _grid(w: np.ndarray, bits: int, symmetric: bool, search: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point per row of each block: w (..., B) -> (scale (...), zero (...)) with w ~ s (q - z).

    With `search`, the range is shrunk by each of `_CLIP_RATIOS` and the one with the least squared error kept."""
    top = 2**bits - 1
    best_s = best_z = best_err = None
    for ratio in _CLIP_RATIOS if search else (1.0,):
        if symmetric:
            mid = 2 ** (bits - 1)
            s = np.abs(w).max(axis=-1) * ratio / (mid - 1 if bits == 8 else mid - 0.5)
            s = np.where(s > 0, s, 1.0).astype(np.float32)
            z = np.full(s.shape, mid, dtype=np.float32)
        else:
            lo = np.minimum(w.min(axis=-1), 0.0) * ratio
            hi = np.maximum(w.max(axis=-1), 0.0) * ratio
            s = ((hi - lo) / top).astype(np.float32)
            s = np.where(s > 0, s, 1.0).astype(np.float32)
            z = np.clip(np.round(-lo / s), 0, top).astype(np.float32)
        q = np.clip(np.round(w / s[..., None] + z[..., None]), 0, top)
        err = (((q - z[..., None]) * s[..., None] - w) ** 2).sum(axis=-1)
        if best_err is None:
            best_s, best_z, best_err = s, z, err
        else:
            better = err < best_err
            best_s = np.where(better, s, best_s)
            best_z = np.where(better, z, best_z)
            best_err = np.where(better, err, best_err)
    return best_s, best_z


def quantize_blocks(weight: np.ndarray, *, bits: int, block_size: int, symmetric: bool = False,
                    search: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest of a (K, N) weight: (q (N, K/B, B) uint8, scale (N, K/B), zero (N, K/B)) float32."""
    k, n = weight.shape
    blocks = weight.T.reshape(n, k // block_size, block_size).astype(np.float32)
    scale, zero = _grid(blocks, bits, symmetric, search and bits < 8)
    q = np.clip(np.round(blocks / scale[..., None] + zero[..., None]), 0, 2**bits - 1).astype(np.uint8)
    return q, scale, zero


def gptq_blocks(weight: np.ndarray, hessian: np.ndarray, *, bits: int, block_size: int, symmetric: bool = False,
                search: bool = True, act_order: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ of a (K, N) weight given H = X^T X (K, K) of its inputs; same outputs as `quantize_blocks`.

    Without `act_order` the grid of each block (scale / zero) is chosen when its first column comes up, from the
    columns as already corrected by the errors of the earlier ones (GPTQ's grouping rule). With `act_order` the
    columns are visited from the largest Hessian diagonal (most active input) down, and each block's grid is fixed
    beforehand from the original weights ("static groups"), so the stored layout stays block-contiguous."""
    k, n = weight.shape
    w = weight.T.astype(np.float64).copy()  # (N, K): rows are output channels
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += np.eye(k) * _GPTQ_DAMP * float(np.mean(np.diag(h)))
    groups = k // block_size
    fixed = None
    order = np.arange(k)
    if act_order:
        blocks = w.reshape(n, groups, block_size).astype(np.float32)
        fixed = _grid(blocks, bits, symmetric, search)  # (N, groups) each
        order = np.argsort(-np.diag(h), kind="stable")
        w = w[:, order]
        h = h[np.ix_(order, order)]
    w = w.astype(np.float32)  # the updates in float32, as the reference implementation; H's factorisation in float64
    try:
        inv = np.linalg.inv(np.linalg.cholesky(h))
        u = np.linalg.cholesky(inv.T @ inv).T.astype(np.float32)  # upper Cholesky factor of H^-1
    except np.linalg.LinAlgError as exc:
        raise QuantizationError(f"GPTQ: the Hessian of a {k}x{n} weight is not positive definite ({exc})") from exc
    top = 2**bits - 1
    q = np.zeros((n, k), dtype=np.uint8)
    scale = np.zeros((n, groups), dtype=np.float32) if fixed is None else fixed[0]
    zero = np.zeros((n, groups), dtype=np.float32) if fixed is None else fixed[1]
    for start in range(0, k, _GPTQ_BLOCK):
        end = min(start + _GPTQ_BLOCK, k)
        chunk = w[:, start:end].copy()
        errors = np.zeros_like(chunk)
        for j in range(end - start):
            col = start + j
            group = int(order[col]) // block_size
            if fixed is None and col % block_size == 0:
                s, z = _grid(chunk[:, j:j + block_size].astype(np.float32)[:, None, :], bits, symmetric, search)
                scale[:, group], zero[:, group] = s[:, 0], z[:, 0]
            s, z = scale[:, group], zero[:, group]
            qc = np.clip(np.round(chunk[:, j] / s + z), 0, top)
            q[:, order[col]] = qc
            err = (chunk[:, j] - (qc - z) * s) / u[col, col]
            chunk[:, j + 1:] -= np.outer(err, u[col, col + 1:end])
            errors[:, j] = err
        w[:, end:] -= errors @ u[start:end, end:]
    return q.reshape(n, groups, block_size), scale, zero


def pack_matmul_nbits(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, *, bits: int,
                      symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' input layout: B (N, K/B, B * bits / 8) uint8, scales (N * K/B,), zero points packed
    (4 bits: two per byte, low nibble first, rows padded to whole bytes; 8 bits: one per byte) or None."""
    n, groups, _ = q.shape
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else q.astype(np.uint8)
    if symmetric:
        return packed, scale.reshape(-1).astype(np.float32), None
    zq = zero.astype(np.uint8)
    if bits == 4:
        if groups % 2:
            zq = np.concatenate([zq, np.zeros((n, 1), dtype=np.uint8)], axis=1)
        zq = zq[:, 0::2] | (zq[:, 1::2] << 4)
    return packed, scale.reshape(-1).astype(np.float32), zq.reshape(-1).astype(np.uint8)


# -- the graph pass -----------------------------------------------------------------------------------------------


def _hessians(model: Any, names: list[str], inputs: dict[str, str], calibration: Sequence[Sequence[int]],
              threads: int | None) -> dict[str, np.ndarray]:
    """X^T X of every listed MatMul's input over the calibration sequences, from the FP32 graph itself."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = sorted({inputs[n] for n in names})
    existing = {o.name for o in probe.graph.output}
    for tensor in wanted:
        if tensor not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds_spec = {i.name: i for i in session.get_inputs()}
    past = [n for n in feeds_spec if n.startswith("past_key_values.")]
    sums: dict[str, np.ndarray] = {}
    for ids in calibration:
        ids = [int(i) for i in ids]
        if len(ids) < 2:
            continue
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "num_logits_to_keep": np.array(len(ids), dtype=np.int64),
        }
        if "position_ids" in feeds_spec:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None, :]
        for name in past:
            shape = feeds_spec[name].shape
            feeds[name] = np.zeros((1, int(shape[1]), 0, int(shape[3])), dtype=np.float32)
        values = session.run(wanted, feeds)
        for tensor, value in zip(wanted, values):
            x = value.reshape(-1, value.shape[-1]).astype(np.float64)
            sums[tensor] = sums.get(tensor, 0.0) + x.T @ x
    if not sums:
        raise QuantizationError("GPTQ needs calibration sequences of 2 or more tokens; none were given")
    return {n: sums[inputs[n]] for n in names}


def quantize_nbits(
    src: Path,
    dst: Path,
    *,
    bits: int = 4,
    block_size: int = 32,
    block_size_8bit: int | None = None,
    block_size_8bit_by_name: Mapping[str, int] | None = None,
    method: str = "rtn",
    symmetric: bool = False,
    lm_head_bits: int | None = 8,
    lm_head_rows: int | None = None,
    embedding: str = "fp16",
    accuracy_level: int = 4,
    calibration: Sequence[Sequence[int]] = (),
    exclude: Sequence[str] = (),
    fallback_fraction: float = 0.0,
    keep_8bit: Sequence[str] = (),
    act_order: bool = True,
    threads: int | None = None,
) -> NBitsResult:
    """Copy the ONNX model at `src` to `dst` with every MatMul whose weight is a 2-D float initializer turned into
    MatMulNBits (`bits` 4 or 8, blocks of `block_size` along K; 8-bit weights, the lm_head and the 8-bit fallback
    included, in blocks of `block_size_8bit` when given: larger blocks decode faster, see CausalLMConfig);
    `block_size_8bit_by_name` maps a node-name suffix ("down_proj") to the block size of that node's 8-bit weight
    instead. `lm_head_bits`: bits of the MatMul named "lm_head" (None: keep it FP32); `lm_head_rows`: when
    `lm_head_bits` differs from `bits`, only the output rows of token ids below it keep `lm_head_bits` and the
    others take `bits` (None: every row keeps `lm_head_bits`; 0: none). `exclude`: node names kept in FP32.
    `calibration`: token-id sequences, needed by method "gptq". `fallback_fraction`: the share of the 4-bit
    weights, largest output error first, kept at 8 bits; `keep_8bit`: node-name suffixes ("qkv", "down_proj") whose
    4-bit weights are kept at 8 bits as well. The model keeps its inputs and outputs."""
    _check_fraction(fallback_fraction)
    return NBitsQuantizer(src, bits=bits, block_size=block_size, block_size_8bit=block_size_8bit,
                          block_size_8bit_by_name=block_size_8bit_by_name, method=method, symmetric=symmetric,
                          lm_head_bits=lm_head_bits, lm_head_rows=lm_head_rows, embedding=embedding,
                          accuracy_level=accuracy_level, calibration=calibration, exclude=exclude,
                          act_order=act_order, threads=threads).write(dst, fallback_fraction, keep_8bit)


class NBitsQuantizer:
    """`quantize_nbits` in two steps: every weight rounded once (GPTQ's Hessians included) when made, then `write`
    any number of models from those roundings, each with its own 8-bit fallback (a share by output error and / or
    weights named by suffix; a weight's 8-bit rounding is made once, the first time one needs it). Arguments as
    `quantize_nbits`'s."""

    def __init__(self, src: Path, *, bits: int = 4, block_size: int = 32, block_size_8bit: int | None = None,
                 block_size_8bit_by_name: Mapping[str, int] | None = None, method: str = "rtn",
                 symmetric: bool = False, lm_head_bits: int | None = 8, lm_head_rows: int | None = None,
                 embedding: str = "fp16", accuracy_level: int = 4, calibration: Sequence[Sequence[int]] = (),
                 exclude: Sequence[str] = (), act_order: bool = True, threads: int | None = None) -> None:
        import onnx

        if bits not in (4, 8):
            raise ConfigError(f"bits must be 4 or 8, not {bits!r}")
        if lm_head_bits not in (None, 4, 8):
            raise ConfigError(f"lm_head_bits must be 4, 8 or null (FP32), not {lm_head_bits!r}")
        if lm_head_rows is not None and (isinstance(lm_head_rows, bool) or not isinstance(lm_head_rows, int)
                                         or lm_head_rows < 0):
            raise ConfigError(f"lm_head_rows must be an int >= 0 or null (every row), not {lm_head_rows!r}")
        if method not in NBITS_METHODS:
            raise ConfigError(f"unknown weight quantization method {method!r}; choose from {list(NBITS_METHODS)}")
        for label, size in (("block_size", block_size), ("block_size_8bit", block_size_8bit)):
            if (size is not None or label == "block_size") and (not isinstance(size, int) or size < 16
                                                                 or size & (size - 1)):
                raise ConfigError(f"{label} must be a power of two >= 16, not {size!r}")
        by_name = dict(block_size_8bit_by_name or {})
        for suffix, size in by_name.items():
            if not isinstance(suffix, str) or not suffix or not isinstance(size, int) or size < 16 \
                    or size & (size - 1):
                raise ConfigError(f"block_size_8bit_by_name maps a node-name suffix to a power of two >= 16, not "
                                  f"{suffix!r}: {size!r}")
        if embedding not in EMBEDDING_FORMATS:
            raise ConfigError(f"embedding must be one of {list(EMBEDDING_FORMATS)}, not {embedding!r}")
        if accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level must be 0-4, not {accuracy_level!r}")
        if method == "gptq" and not calibration:
            raise ConfigError("method 'gptq' needs calibration token sequences (the layer inputs it corrects for)")
        self.src, self.bits, self.block_size, self.block_8 = src, bits, block_size, block_size_8bit or block_size
        self.by_name, self.method, self.symmetric, self.act_order = by_name, method, symmetric, act_order
        self.lm_head_bits, self.embedding, self.accuracy_level = lm_head_bits, embedding, accuracy_level
        self.calibration_count = len(calibration) if method == "gptq" else 0
        self.exclude = sorted(exclude)
        model = self._load()
        self.weights = {t.name: t for t in model.graph.initializer}
        # name -> (node name, weight name, bits, output columns): one MatMulNBits each; a split lm_head is two
        # parts, "lm_head" (its first lm_head_rows token ids, at lm_head_bits) then "lm_head/rest" (at `bits`),
        # their outputs concatenated in this order
        self.targets: dict[str, tuple[str, str, int, tuple[int, int] | None]] = {}
        self.split_rows = 0
        inputs: dict[str, str] = {}
        for node in model.graph.node:
            if node.op_type != "MatMul" or node.name in exclude or node.input[1] not in self.weights:
                continue
            tensor = self.weights[node.input[1]]
            if len(tensor.dims) != 2 or tensor.data_type != onnx.TensorProto.FLOAT:
                continue
            node_bits = (lm_head_bits if node.name == "lm_head" else bits)
            if node_bits is None:
                continue
            vocab = int(tensor.dims[1])
            inputs[node.name] = node.input[0]
            if node.name == "lm_head" and lm_head_rows is not None and node_bits != bits and lm_head_rows < vocab:
                if lm_head_rows == 0:
                    node_bits = bits
                else:
                    self.split_rows = lm_head_rows
                    self.targets[node.name] = (node.name, node.input[1], node_bits, (0, lm_head_rows))
                    self.targets["lm_head/rest"] = (node.name, node.input[1], bits, (lm_head_rows, vocab))
                    inputs["lm_head/rest"] = node.input[0]
                    continue
            self.targets[node.name] = (node.name, node.input[1], node_bits, None)
        if not self.targets:
            raise QuantizationError(f"{src.name} has no MatMul with a float weight to quantize")
        self.hessians = (_hessians(model, list(self.targets), inputs, calibration, threads)
                         if method == "gptq" else {})
        self.results = {name: self._round(name, node_bits) for name, (_, _, node_bits, _) in self.targets.items()}
        self._eight: dict[str, Any] = {}

    def _load(self) -> Any:
        import onnx

        try:
            return onnx.load(str(self.src))
        except Exception as exc:
            raise QuantizationError(f"cannot read {self.src}: {exc}") from exc

    def _block(self, name: str, node_bits: int) -> int:
        if node_bits != 8:
            return self.block_size
        return next((size for suffix, size in self.by_name.items() if name.endswith(suffix)), self.block_8)

    def _round(self, name: str, node_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
        _, weight, _, columns = self.targets[name]
        return _quantize_one(self.weights[weight], node_bits, self._block(name, node_bits), self.symmetric,
                             self.hessians.get(name), self.act_order, columns)

    def fallback(self, fraction: float, keep_8bit: Sequence[str] = ()) -> list[str]:
        """The `bits`-bit weights kept at 8 bits: those whose node name ends with one of `keep_8bit`, and the share
        `fraction` of all of them with the largest output error (the split head's 4-bit rows never)."""
        _check_fraction(fraction)
        candidates = self._fallback_candidates()
        named = [n for n, r in candidates.items() if r[3] == 4 and n.endswith(tuple(keep_8bit))] if keep_8bit else []
        return sorted({*named, *_fallback(candidates, fraction)})

    def share_8bit(self, names: Sequence[str]) -> float:
        """The share of the weights a fallback may take (4-bit ones, the split head's 4-bit rows aside) that
        `names` (`fallback`'s) hold, by parameter count."""
        sizes = {n: r[0].size for n, r in self._fallback_candidates().items() if r[3] == 4}
        return sum(sizes.get(n, 0) for n in names) / max(sum(sizes.values()), 1)

    def _fallback_candidates(self) -> dict[str, Any]:
        return {n: r for n, r in self.results.items() if n != "lm_head/rest"}

    def write(self, dst: Path, fallback_fraction: float = 0.0, keep_8bit: Sequence[str] = ()) -> NBitsResult:
        """The quantized model at `dst` (overwritten), with the 4-bit weights `fallback` names at 8 bits."""
        import onnx
        from onnx import helper, numpy_helper

        fallback = self.fallback(fallback_fraction, keep_8bit)
        for name in fallback:
            if name not in self._eight:
                self._eight[name] = self._round(name, 8)
        results = {**self.results, **{name: self._eight[name] for name in fallback}}
        model = self._load()  # a fresh graph each time: writing rewrites it
        weights = {t.name: t for t in model.graph.initializer}
        parts: dict[str, list[str]] = {}
        for name, (node_name, _, _, _) in self.targets.items():
            parts.setdefault(node_name, []).append(name)
        nodes = []
        consumed: set[str] = set()
        counts: dict[str, int] = {"MatMulNBits": 0}
        for node in model.graph.node:
            if node.name not in parts:
                nodes.append(node)
                continue
            names = parts[node.name]  # in column order
            outputs = list(node.output) if len(names) == 1 else [f"{node.output[0]}/{i}" for i in range(len(names))]
            base = node.input[1]
            consumed.add(base)
            k = int(weights[base].dims[0])
            for name, output in zip(names, outputs):
                q, scale, zero, node_bits, _ = results[name]
                packed, scales, zeros = pack_matmul_nbits(q, scale, zero, bits=node_bits, symmetric=self.symmetric)
                prefix = base if name == node.name else f"{base}_{name.rpartition('/')[2]}"
                extra = [numpy_helper.from_array(packed, f"{prefix}_Q{node_bits}"),
                         numpy_helper.from_array(scales, f"{prefix}_scales")]
                if zeros is not None:
                    extra.append(numpy_helper.from_array(zeros, f"{prefix}_zero_points"))
                model.graph.initializer.extend(extra)
                nodes.append(helper.make_node("MatMulNBits", [node.input[0], *[t.name for t in extra]], [output],
                                              name=name, domain="com.microsoft", K=k, N=int(q.shape[0]),
                                              bits=node_bits, block_size=int(q.shape[-1]),
                                              accuracy_level=self.accuracy_level))
                counts["MatMulNBits"] += 1
                counts[f"MatMulNBits_{node_bits}bit"] = counts.get(f"MatMulNBits_{node_bits}bit", 0) + 1
            if len(names) > 1:
                nodes.append(helper.make_node("Concat", outputs, list(node.output), name=f"{node.name}/concat",
                                              axis=-1))
        if self.embedding == "fp16":
            nodes = _fp16_embedding(model, nodes, weights)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        keep = [t for t in model.graph.initializer if t.name not in consumed]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(model, str(dst))
        settings = {
            "format": "MatMulNBits",
            "bits": self.bits,
            "block_size": self.block_size if self.bits == 4 else self.block_8,  # of the `bits`-bit weights
            "block_size_8bit": self.block_8,  # of every 8-bit weight (lm_head and fallback included) ...
            "block_size_8bit_by_name": self.by_name,  # ... but those whose node name ends with a key here
            "method": self.method,
            "symmetric": self.symmetric,
            "lm_head_bits": self.lm_head_bits,
            "lm_head_rows": self.split_rows or None,  # token ids 0 .. n-1 at lm_head_bits, the rest at `bits`
            "embedding": self.embedding,
            "accuracy_level": self.accuracy_level,
            "compute": "int8 dot products per block" if self.accuracy_level == 4 else "float",
            "calibration_sequences": self.calibration_count,
            "act_order": self.act_order if self.method == "gptq" else None,
            "excluded": self.exclude,
            "fallback_fraction": fallback_fraction,
            "keep_8bit": list(keep_8bit),
            "fallback_8bit": sorted(fallback),
            "relative_error": {name: round(r[4], 6) for name, r in sorted(results.items())},
        }
        log.info("%s: %d MatMuls -> MatMulNBits (%d-bit, block %d, %s, %d kept at 8 bits)", dst.name,
                 counts["MatMulNBits"], self.bits, settings["block_size"], self.method, len(fallback))
        return NBitsResult(dst, settings, counts)


def _quantize_one(tensor: Any, bits: int, block_size: int, symmetric: bool, hessian: np.ndarray | None,
                  act_order: bool = True, columns: tuple[int, int] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """(q, scale, zero, bits, relative output error) of one weight initializer, or of its output `columns` [lo, hi)
    (GPTQ treats output columns independently, so a part is quantized as the whole would be)."""
    from onnx import numpy_helper

    weight = numpy_helper.to_array(tensor).astype(np.float32)
    if columns is not None:
        weight = np.ascontiguousarray(weight[:, columns[0]:columns[1]])
    k, n = weight.shape
    # MatMulNBits stores ceil(K / B) blocks per column and ignores the padding of the last one: zero rows here
    # (a zero Hessian row is a dead input to GPTQ), so any block size fits any K.
    pad = -k % block_size
    padded = np.pad(weight, ((0, pad), (0, 0)))
    if hessian is not None:
        q, scale, zero = gptq_blocks(padded, np.pad(hessian, ((0, pad), (0, pad))), bits=bits, block_size=block_size,
                                     symmetric=symmetric, act_order=act_order)
    else:
        q, scale, zero = quantize_blocks(padded, bits=bits, block_size=block_size, symmetric=symmetric)
    approx = ((q.astype(np.float32) - zero[..., None]) * scale[..., None]).reshape(n, k + pad)[:, :k].T  # (K, N)
    err = (weight - approx).astype(np.float64)
    if hessian is None:
        rel = float((err**2).sum() / max(float((weight.astype(np.float64) ** 2).sum()), 1e-30))
    else:
        rel = float(((hessian @ err) * err).sum() / max(float(((hessian @ weight) * weight).sum()), 1e-30))
    return q, scale, zero, bits, rel


def _check_fraction(fraction: Any) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"fallback_fraction must be in [0, 1), not {fraction!r}")


def _fallback(results: dict[str, Any], fraction: float) -> list[str]:
    """The 4-bit weights with the largest relative error, up to `fraction` of all 4-bit parameters."""
    four = {name: r for name, r in results.items() if r[3] == 4}
    total = sum(r[0].size for r in four.values())
    chosen, size = [], 0
    for name, r in sorted(four.items(), key=lambda item: -item[1][4]):
        if size + r[0].size > fraction * total:
            break
        chosen.append(name)
        size += r[0].size
    return chosen


def _fp16_embedding(model: Any, nodes: list[Any], weights: dict[str, Any]) -> list[Any]:
    """Gather(table fp32) -> Gather(table fp16) + Cast, for every Gather reading a 2-D float initializer that no
    other node uses (a tied lm_head has its own transposed copy in the fused graph)."""
    from onnx import TensorProto, helper, numpy_helper

    users: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    out = []
    for node in nodes:
        table = node.input[0] if node.op_type == "Gather" else ""
        tensor = weights.get(table)
        if tensor is None or users.get(table) != 1 or len(tensor.dims) != 2 or \
                tensor.data_type != TensorProto.FLOAT:
            out.append(node)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), table)
        tensor.CopyFrom(half)
        gathered = f"{node.output[0]}_fp16"
        out.append(helper.make_node("Gather", [table, node.input[1]], [gathered], name=node.name,
                                    axis=next((a.i for a in node.attribute if a.name == "axis"), 0)))
        out.append(helper.make_node("Cast", [gathered], list(node.output), name=f"{node.name}/cast",
                                    to=TensorProto.FLOAT))
    return out
