"""ONNX Runtime INT8: dynamic, static QDQ (calibrated) and weight-only, on any ONNX file.

    result = quantize_onnx("model.onnx", "model_int8.onnx", mode="dynamic", preset="avx512-vnni")
    result.ops["MatMulInteger"], result.settings                  # what was done, for the manifest

Modes:
    dynamic      weights int8 offline, activations quantized at run time (DynamicQuantizeLinear + MatMulInteger, or
                 QAttention / QEmbedLayerNormalization / DynamicQuantizeMatMul on a fused graph). No calibration.
    static       QDQ format with activation ranges calibrated on the task's data (minmax / entropy / percentile).
                 QOperator format is never used: ORT rejects it on transformer graphs (int8 LayerNorm bias into
                 QGemm). The graph is pre-processed with `quant_pre_process(skip_symbolic_shape=True)`: symbolic
                 shape inference fails on exported BERT graphs.
    weight-only  int8 weights in MatMulNBits (bits=8, blocks of `block_size` along K, accuracy_level 4 = int8
                 compute); for decoders with a KV cache the cheap, safe choice.

Every intermediate file goes to a temporary folder, never the working folder. Works on encoders and decoders
alike (`model_type=None` skips the transformer fusion, which only knows encoder graphs).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgellm.config import suggest
from edgellm.console import silence
from edgellm.errors import ConfigError, DataError, QuantizationError, UnsupportedTargetError
from edgellm.families import FAMILIES
from edgellm.quantize.calibration import CalibrationReader, check_feeds
from edgellm.quantize.presets import CONTRIB_DOMAIN, Preset, detect_preset, get_preset

__all__ = [
    "ORT_MODES",
    "CALIBRATION_METHODS",
    "QUANTIZED_OPS",
    "FUSABLE_MODEL_TYPES",
    "QuantNode",
    "OnnxQuantResult",
    "OnnxQuantizer",
    "quantize_onnx",
    "split_skip_layer_norm",
    "op_counts",
    "quantized_ops",
    "check_not_quantized",
    "model_inputs",
]

log = logging.getLogger(__name__)

ORT_MODES = ("dynamic", "static", "weight-only")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999  # percentile calibration keeps this share of each activation's values inside the range
# Op types that only appear in a model that is already quantized.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul",
    "QLinearConv", "QLinearAdd", "QLinearMul", "QGemm", "QAttention", "QEmbedLayerNormalization",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "GatherBlockQuantized", "MatMulBnb4",
    "DynamicQuantizeLSTM", "QOrderedMatMul", "QOrderedAttention",
})
# Hugging Face model types whose exported graphs onnxruntime.transformers fuses with its "bert" optimizer.
# The families' own record (edgellm.families) plus two BERT-like types edgellm has no family record of.
FUSABLE_MODEL_TYPES = {**{t: f.ort_fusion for t, f in FAMILIES.items() if f.ort_fusion}, "mpnet": "bert",
                       "minilm": "bert"}
_LARGE = 1_800_000_000  # bytes: above this, write weights as external data (protobuf's 2 GB limit)
_FUSION_ATOL = 1e-3  # fused graph vs the original on real inputs; above this the fusion is not used


def _ort_q() -> Any:
    import onnxruntime.quantization as q

    return q


def _no_preprocess_hint() -> Any:
    """ORT's quantizers log "Please consider to run pre-processing before quantization" (on the root logger) for
    any graph without its pre-processing mark. That pre-processing is shape inference plus the graph optimisations;
    the graph reaching the quantizer has had them (the exporter's constant folding, the transformer fusion) and is
    checked against torch afterwards, so the hint says nothing here."""
    return silence(r"Please consider to run pre-processing before quantization")


@dataclass
class QuantNode:
    """A node the quantizer will turn into INT8: its weight initializer and its float activation input."""

    name: str
    op_type: str
    weight: str  # initializer name
    activation: str | None  # float input quantized with it (None: weight-only, e.g. an embedding table)
    transposed: bool = False  # Gemm transB: weight is (N, K)


@dataclass
class OnnxQuantResult:
    path: Path
    settings: dict[str, Any]  # recorded in the manifest's ModelEntry.quantization
    ops: dict[str, int]  # op type -> count in the quantized graph
    excluded: list[str] = field(default_factory=list)  # nodes kept in float
    calibration_fed: int | None = None  # samples the calibration reader handed out


def op_counts(model: Any) -> dict[tuple[str, str], int]:
    """{(domain, op_type): count} over the main graph."""
    out: dict[tuple[str, str], int] = {}
    for node in model.graph.node:
        key = (node.domain or "", node.op_type)
        out[key] = out.get(key, 0) + 1
    return out


def quantized_ops(model: Any) -> dict[str, int]:
    """Counts of the quantization op types in `model` ({} for a float model)."""
    counts: dict[str, int] = {}
    for (_, op), n in op_counts(model).items():
        if op in QUANTIZED_OPS:
            counts[op] = counts.get(op, 0) + n
    return counts


def check_not_quantized(model: Any, label: str) -> None:
    found = quantized_ops(model)
    if found:
        listed = ", ".join(f"{n} {op}" for op, n in sorted(found.items()))
        raise QuantizationError(
            f"{label} is already quantized (it holds {listed}); quantize its FP32 source instead"
        )


def model_inputs(model: Any) -> dict[str, Any]:
    """Graph input name -> numpy dtype (initializers excluded)."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        out[value.name] = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return out


def _load(path: Path, *, weights: bool = True) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as exc:
        raise QuantizationError(f"cannot read ONNX model {path}: {exc}") from exc


def _save(model: Any, path: Path) -> None:
    import onnx

    large = model.ByteSize() > _LARGE if not _has_external(model) else True
    if path.exists():
        path.unlink()
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data" if large else None)


def _has_external(model: Any) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in model.graph.initializer)


def _run(path: Path, feeds: Sequence[Mapping[str, np.ndarray]], outputs: list[str] | None = None,
         threads: int | None = None) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return [session.run(outputs, {k: v for k, v in f.items() if k in names}) for f in feeds]


def _resolve_preset(preset: str | Preset | None) -> Preset:
    if isinstance(preset, Preset):
        return preset
    return get_preset(preset or detect_preset())


class OnnxQuantizer:
    """One float ONNX model, prepared once (fused / pre-processed), quantized as often as asked.

    The accuracy-aware mode quantizes the same prepared graph many times with different nodes kept in float;
    `candidates` lists the nodes it may keep, in graph order.

    Args:
        src: float ONNX file (external data next to it is fine).
        workdir: folder for the prepared graph (a temporary folder; never the working folder).
        mode: dynamic, static or weight-only.
        preset: a key of PRESETS (or a Preset); None = this machine's CPU family.
        per_channel, reduce_range, fuse: None = the preset's.
        model_type: Hugging Face model type; the transformer fusion runs only for encoder types it knows.
        quantize_embeddings: INT8 the embedding tables too (Gather / EmbedLayerNormalization).
        calibration: static mode: a CalibrationReader or a list of feeds (input name -> array).
        calibration_method: minmax, entropy or percentile.
        check_feeds: real inputs to check the fused graph against the original (recommended).
        block_size: weight-only: weights per scale along the reduction axis.
    """

    def __init__(
        self,
        src: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *,
        mode: str = "dynamic",
        preset: str | Preset | None = None,
        per_channel: bool | None = None,
        reduce_range: bool | None = None,
        fuse: bool | None = None,
        model_type: str | None = None,
        num_heads: int = 0,
        hidden_size: int = 0,  # both 0 = read from the graph; give both or neither (the optimizer asserts)
        quantize_embeddings: bool = True,
        calibration: CalibrationReader | Sequence[Mapping[str, np.ndarray]] | None = None,
        calibration_method: str = "minmax",
        check_feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
        block_size: int = 32,
    ) -> None:
        if mode not in ORT_MODES:
            raise ConfigError(f"ONNX Runtime quantization mode {mode!r} is not one of {list(ORT_MODES)}"
                              f"{suggest(str(mode), ORT_MODES)}")
        if calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration method {calibration_method!r} is not one of {list(CALIBRATION_METHODS)}"
                              f"{suggest(str(calibration_method), CALIBRATION_METHODS)}")
        self.src = Path(src)
        self.workdir = Path(workdir)
        self.mode = mode
        self.preset = _resolve_preset(preset)
        if "onnxruntime" not in self.preset.backends:
            raise UnsupportedTargetError(
                f"preset {self.preset.key!r} makes INT8 models for {list(self.preset.backends)}, not ONNX Runtime"
            )
        if mode not in self.preset.modes:
            raise UnsupportedTargetError(
                f"preset {self.preset.key!r} runs INT8 modes {list(self.preset.modes)}, not {mode!r}: "
                + ("its runtime has no dynamic quantization ops (DynamicQuantizeLinear / MatMulInteger)"
                   if mode == "dynamic" else "its runtime has no kernel for that format")
            )
        self.per_channel = self.preset.per_channel if per_channel is None else bool(per_channel)
        self.reduce_range = self.preset.reduce_range if reduce_range is None else bool(reduce_range)
        want_fuse = self.preset.fuse if fuse is None else bool(fuse)
        if want_fuse and not self.preset.contrib_ops:
            raise UnsupportedTargetError(f"preset {self.preset.key!r} cannot run fused com.microsoft ops; set fuse off")
        # static QDQ has no quantizer for the fused ops; MatMulNBits (weight-only) cannot take a fused Attention
        fusable = want_fuse and mode == "dynamic"
        self.fuse_type = FUSABLE_MODEL_TYPES.get(str(model_type or "").lower()) if fusable else None
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.quantize_embeddings = bool(quantize_embeddings)
        self.calibration_method = calibration_method
        self.block_size = int(block_size)
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"weight-only block_size must be a power of two >= 16, not {block_size!r}")
        self.fused = False
        self.fusion_note = ""
        self.split_skip_layer_norms = 0
        model = _load(self.src)
        check_not_quantized(model, f"ONNX model {self.src.name}")
        bad = self.preset.unsupported_ops(op_counts(model))
        if bad:
            raise UnsupportedTargetError(
                f"{self.src.name} holds ops that preset {self.preset.key!r} cannot run: {bad}; export it without "
                "fused contrib ops (plain ONNX) for this target"
            )
        self.inputs = model_inputs(model)
        self._reader = self._make_reader(calibration) if mode == "static" else None
        if mode == "static" and self._reader is None:
            raise QuantizationError("static INT8 needs calibration data (the task's training texts); got none")
        self.prepared = self._prepare(model, check_feeds)
        self.candidates = self._candidates()

    # -- preparation ---------------------------------------------------------------------------------------------

    def _make_reader(self, calibration: Any) -> CalibrationReader | None:
        if calibration is None:
            return None
        if isinstance(calibration, CalibrationReader):
            check_feeds(calibration.feeds, list(self.inputs))
            if self.calibration_method != "minmax" and _ragged(calibration.feeds):
                raise DataError("entropy / percentile calibration needs samples of one shape (ORT stacks them); "
                                "pad the feeds to one length (text_feeds(..., pad_to_longest=True))")
            return calibration
        if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Sequence):
            raise DataError(f"calibration must be a list of feeds or a CalibrationReader, not {type(calibration).__name__}")
        feeds = list(calibration)
        check_feeds(feeds, list(self.inputs))
        if self.calibration_method != "minmax" and _ragged(feeds):
            feeds = _pad_to_longest(feeds)
        return CalibrationReader(feeds)

    def _prepare(self, model: Any, check: Sequence[Mapping[str, np.ndarray]] | None) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        base = self.workdir / "float.onnx"
        _save(model, base)
        del model
        if self.mode == "static":
            pre = self.workdir / "preprocessed.onnx"
            _ort_q().quant_pre_process(str(base), str(pre), skip_symbolic_shape=True,
                                       save_as_external_data=base.stat().st_size > _LARGE)
            return pre
        prepared = self._fuse(base, check) if self.fuse_type else base
        if self.mode == "dynamic":
            prepared = self._gemm_to_matmul(prepared)
        return prepared

    def _gemm_to_matmul(self, path: Path) -> Path:
        """ORT's dynamic quantizer turns every Gemm into MatMul + Add under a new name; do it first so that the
        names the accuracy-aware mode and `exclude` use are the names the quantizer sees."""
        from onnxruntime.quantization.onnx_model import ONNXModel

        model = _load(path)
        if not any(n.op_type == "Gemm" for n in model.graph.node):
            return path
        ONNXModel(model).replace_gemm_with_matmul()
        out = self.workdir / "matmul.onnx"
        _save(model, out)
        return out

    def _fuse(self, base: Path, check: Sequence[Mapping[str, np.ndarray]] | None) -> Path:
        fused = self.workdir / "fused.onnx"
        try:
            from onnxruntime.transformers.fusion_options import FusionOptions
            from onnxruntime.transformers.optimizer import optimize_model

            options = FusionOptions(self.fuse_type)
            # On pruned heads ORT warns "Input hidden size (288) is not same as weight matrix dimension of q,k,v
            # (384)": its hidden_size is the attention width (kept heads x head size), which pruning makes smaller
            # than the model width the q/k/v weights read from. ORT documents that case and fuses with the pruned
            # width; the fused graph is checked against the original on real inputs below.
            with silence(r"Input hidden size \(\d+\) is not same as weight matrix dimension of q,k,v",
                         loggers=("fusion_attention", "onnxruntime.transformers.fusion_attention")):
                opt = optimize_model(str(base), model_type=self.fuse_type, num_heads=self.num_heads,
                                     hidden_size=self.hidden_size, opt_level=1, optimization_options=options)
            self.split_skip_layer_norms = split_skip_layer_norm(opt.model)
            opt.save_model_to_file(str(fused), use_external_data_format=base.stat().st_size > _LARGE)
        except Exception as exc:  # the fusion is an optimisation: on failure quantize the plain graph
            self.fusion_note = f"fusion failed: {type(exc).__name__} {exc}"
            log.warning("transformer fusion of %s failed (%s); quantizing the unfused graph", self.src.name, exc)
            return base
        counts = op_counts(_load(fused, weights=False))
        fused_ops = {op: n for (d, op), n in counts.items() if d == CONTRIB_DOMAIN}
        if not fused_ops.get("Attention"):
            self.fusion_note = "no attention subgraph was recognised"
            log.info("fusion found no attention subgraph in %s; quantizing the unfused graph", self.src.name)
            return base
        if check:
            diff = _max_output_diff(base, fused, check)
            if diff > _FUSION_ATOL:
                self.fusion_note = f"fused graph differs by {diff:.3g} on real inputs"
                log.warning("fused %s differs from the original by %.3g; quantizing the unfused graph",
                            self.src.name, diff)
                return base
        self.fused = True
        self.fusion_note = ", ".join(f"{n} {op}" for op, n in sorted(fused_ops.items()))
        if self.split_skip_layer_norms:
            self.fusion_note += f" ({self.split_skip_layer_norms} SkipLayerNormalization split into Add + LayerNormalization)"
        return fused

    def _op_types(self) -> list[str]:
        if self.mode == "dynamic":
            ops = ["MatMul", "Attention"]
            if self.quantize_embeddings:
                ops += ["Gather", "EmbedLayerNormalization"]
        elif self.mode == "static":
            ops = ["MatMul", "Gemm"]
            if self.quantize_embeddings:
                ops.append("Gather")
        else:  # GatherBlockQuantized is 4-bit only in ORT 1.32: embeddings stay float in weight-only mode
            ops = ["MatMul"]
        return ops

    def _candidates(self) -> list[QuantNode]:
        """Nodes with a float weight initializer that this mode quantizes, in graph order."""
        from onnx import TensorProto

        model = _load(self.prepared, weights=False)
        floats = {i.name: list(i.dims) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
        ops = set(self._op_types())
        out = []
        for node in model.graph.node:
            if node.op_type not in ops or not node.name:
                continue
            if node.op_type == "MatMul" and len(node.input) > 1 and len(floats.get(node.input[1], [])) == 2:
                out.append(QuantNode(node.name, "MatMul", node.input[1], node.input[0]))
            elif node.op_type == "Gemm" and len(floats.get(node.input[1], [])) == 2:
                trans = any(a.name == "transB" and a.i == 1 for a in node.attribute)
                out.append(QuantNode(node.name, "Gemm", node.input[1], node.input[0], transposed=trans))
            elif node.op_type == "Attention" and len(floats.get(node.input[1], [])) == 2:
                out.append(QuantNode(node.name, "Attention", node.input[1], node.input[0]))
            elif node.op_type == "Gather" and len(floats.get(node.input[0], [])) == 2:
                out.append(QuantNode(node.name, "Gather", node.input[0], None))
            elif node.op_type == "EmbedLayerNormalization" and len(floats.get(node.input[2], [])) == 2:
                out.append(QuantNode(node.name, "EmbedLayerNormalization", node.input[2], None))
        return out

    # -- quantization --------------------------------------------------------------------------------------------

    def settings(self, exclude: Sequence[str] = ()) -> dict[str, Any]:
        from importlib.metadata import version

        weight = "uint8" if self.preset.weight_type == "uint8" else "int8"
        out: dict[str, Any] = {
            "tool": "onnxruntime.quantization",
            "tool_version": version("onnxruntime"),
            "mode": self.mode,
            "format": {"dynamic": "QOperator (dynamic)", "static": "QDQ",
                       "weight-only": "MatMulNBits (bits=8)"}[self.mode],
            "preset": self.preset.key,
            "per_channel": self.per_channel if self.mode != "weight-only" else None,
            "reduce_range": self.reduce_range if self.mode != "weight-only" else None,
            "weight_type": weight,
            "activation_type": {"dynamic": "uint8 (at run time)", "static": self.preset.activation_type,
                                "weight-only": "int8 blocks at run time (accuracy_level 4)"}[self.mode],
            "op_types": self._op_types(),
            "quantize_embeddings": self.quantize_embeddings and self.mode != "weight-only",
            "fused": self.fused,
            "fusion": self.fusion_note or None,
            "excluded_nodes": list(exclude),
        }
        if self.mode == "weight-only":
            out["block_size"] = self.block_size
        if self.mode == "static":
            out["activation_matmuls"] = "float" if self.preset.contrib_ops else "int8"
            out["calibration"] = {"method": self.calibration_method, "samples": len(self._reader or [])}
            if self.calibration_method == "percentile":
                out["calibration"]["percentile"] = PERCENTILE
        return out

    def quantize(self, dst: str | os.PathLike[str], *, exclude: Sequence[str] = ()) -> OnnxQuantResult:
        """Write the INT8 model to `dst`, keeping the nodes in `exclude` in float."""
        dst = Path(dst)
        exclude = list(dict.fromkeys(exclude))
        names = {n.name for n in _load(self.prepared, weights=False).graph.node}
        unknown = [n for n in exclude if n not in names]
        if unknown:
            raise ConfigError(
                f"excluded node(s) {unknown} are not in the graph being quantized"
                f"{suggest(unknown[0], names)}"
                + (" (the transformer fusion renamed or merged nodes; name the fused node, or set fuse off)"
                   if self.fused else "")
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        fed_before = self._reader.fed if self._reader else None
        try:
            if self.mode == "dynamic":
                self._dynamic(dst, exclude)
            elif self.mode == "static":
                self._static(dst, exclude)
            else:
                self._weight_only(dst, exclude)
        except (QuantizationError, ConfigError, DataError):
            raise
        except Exception as exc:
            raise QuantizationError(f"ONNX Runtime {self.mode} quantization of {self.src.name} failed: {exc}") from exc
        model = _load(dst, weights=False)
        bad = self.preset.unsupported_ops(op_counts(model))
        if bad:
            raise UnsupportedTargetError(f"the INT8 graph holds ops preset {self.preset.key!r} cannot run: {bad}")
        counts: dict[str, int] = {}
        for (_, op), n in op_counts(model).items():
            counts[op] = counts.get(op, 0) + n
        fed = (self._reader.fed - fed_before) if self._reader and fed_before is not None else None
        if self._reader is not None and fed != len(self._reader):
            raise QuantizationError(
                f"calibration fed {fed} samples instead of the {len(self._reader)} asked for (internal error)"
            )
        return OnnxQuantResult(dst, self.settings(exclude), counts, list(exclude), fed)

    def _dynamic(self, dst: Path, exclude: list[str]) -> None:
        import onnx

        q = _ort_q()
        with _no_preprocess_hint():
            q.quantize_dynamic(
                str(self.prepared), str(dst),
                op_types_to_quantize=self._op_types(),
                per_channel=self.per_channel,
                reduce_range=self.reduce_range,
                weight_type=q.QuantType.QUInt8 if self.preset.weight_type == "uint8" else q.QuantType.QInt8,
                nodes_to_exclude=exclude,
                use_external_data_format=self.prepared.stat().st_size > _LARGE,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
            )

    def _static(self, dst: Path, exclude: list[str]) -> None:
        import onnx

        q = _ort_q()
        reader = self._reader
        if reader is None:  # checked in __init__; kept for type checkers
            raise QuantizationError("static INT8 needs calibration data")
        reader.rewind()
        method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                  "percentile": q.CalibrationMethod.Percentile}[self.calibration_method]
        types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
        extra: dict[str, Any] = {
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            "ActivationSymmetric": self.preset.activation_type == "int8",
            "WeightSymmetric": self.preset.weight_type == "int8",
        }
        # The QDQ quantizer ignores MatMulConstBOnly: on CPUs keep activation x activation MatMuls (attention
        # scores and context) in float by name; NPUs take every MatMul in INT8.
        exclude = list(exclude) + [n for n in self._activation_matmuls() if n not in exclude]
        # Not "CalibMaxIntermediateOutputs": ORT 1.32 clears the collected batch without folding it into the ranges
        # ("No data is collected."). MinMax keeps only per-tensor ReduceMin / ReduceMax per sample anyway.
        if self.calibration_method == "percentile":
            extra["CalibPercentile"] = PERCENTILE
        with _no_preprocess_hint():
            q.quantize_static(  # ORT writes its augmented model into its own temporary folder
                str(self.prepared), str(dst), reader,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=self._op_types(),
                per_channel=self.per_channel,
                reduce_range=self.reduce_range,
                activation_type=types[self.preset.activation_type],
                weight_type=types[self.preset.weight_type],
                nodes_to_exclude=exclude,
                use_external_data_format=self.prepared.stat().st_size > _LARGE,
                calibrate_method=method,
                extra_options=extra,
            )

    def _activation_matmuls(self) -> list[str]:
        if not self.preset.contrib_ops:
            return []
        model = _load(self.prepared, weights=False)
        inits = {i.name for i in model.graph.initializer}
        consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
        return [n.name for n in model.graph.node
                if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] not in inits | consts and n.name]

    def _weight_only(self, dst: Path, exclude: list[str]) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        ops = tuple(self._op_types())
        config = DefaultWeightOnlyQuantConfig(
            block_size=self.block_size, is_symmetric=True, accuracy_level=4, bits=8,
            op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer = MatMulNBitsQuantizer(_load(self.prepared), nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
        _save(quantizer.model.model, dst)


def _ragged(feeds: Sequence[Mapping[str, np.ndarray]]) -> bool:
    return any(len({f[name].shape for f in feeds}) > 1 for name in feeds[0])


def _pad_to_longest(feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Histogram calibrators stack the samples: pad (batch, sequence) integer inputs with 0 to the longest.
    For text, prefer `text_feeds(..., pad_to_longest=True)`, which pads with the tokenizer's own pad id."""
    out = []
    longest = {name: max(f[name].shape[-1] for f in feeds) for name in feeds[0] if feeds[0][name].ndim == 2}
    for feed in feeds:
        padded = {}
        for name, value in feed.items():
            if name in longest and np.issubdtype(value.dtype, np.integer):
                padded[name] = np.pad(value, ((0, 0), (0, longest[name] - value.shape[1])))
            else:
                padded[name] = value
        out.append(padded)
    if _ragged(out):
        raise DataError("entropy / percentile calibration needs samples of one shape, and these differ beyond "
                        "(batch, sequence) integer inputs; use minmax or equal-shaped samples")
    return out


def _max_output_diff(a: Path, b: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> float:
    out_a = _run(a, feeds)
    out_b = _run(b, feeds)
    return max(float(np.max(np.abs(x - y))) if x.size else 0.0
               for ra, rb in zip(out_a, out_b) for x, y in zip(ra, rb))


def split_skip_layer_norm(model: Any) -> int:
    """Replace every com.microsoft SkipLayerNormalization by Add (+ bias Add) and LayerNormalization, in place.

    The transformer optimizer fuses the residual Add into the layer norm, but ONNX Runtime 1.32's CPU kernel for the
    fused op is slow: 248 us against 56 us for Add + Add + LayerNormalization on a 128 x 384 input (one thread,
    measured here), which made it 40% of a 2-layer INT8 MiniLM's time. The Attention and GELU fusions stay.
    The bias is added first (`x + bias`, then `+ skip`): after dynamic quantization ONNX Runtime folds that Add
    into DynamicQuantizeMatMul when the session disables its own SkipLayerNormFusion, which would otherwise fuse
    the pattern back; the runtime does so on CPU (edgellm.runtime.ort.CPU_DISABLED_OPTIMIZERS).
    Returns how many nodes were split. Outputs other than the normalised one are kept when used: the
    input + skip + bias sum (output 3) is the second Add's output; mean / inverse std (outputs 1, 2) are not
    supported and such a node is left fused.
    """
    from onnx import helper

    if not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in model.opset_import):
        return 0  # LayerNormalization is an ONNX op from opset 17 on
    graph = model.graph
    out: list[Any] = []
    split = 0
    for node in graph.node:
        extra = [o for o in list(node.output)[1:3] if o]
        if node.op_type != "SkipLayerNormalization" or node.domain != CONTRIB_DOMAIN or extra:
            out.append(node)
            continue
        inputs = list(node.input) + [""] * (5 - len(node.input))
        x, skip, gamma, beta, bias = inputs[:5]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        outputs = list(node.output) + [""] * (4 - len(node.output))
        base = node.name or f"SkipLayerNorm_{split}"
        summed = outputs[3] or f"{base}/sum"  # input + skip (+ bias): the graph's own name when it is used
        if bias:
            out.append(helper.make_node("Add", [x, bias], [f"{base}/biased"], name=f"{base}/AddBias"))
            out.append(helper.make_node("Add", [f"{base}/biased", skip], [summed], name=f"{base}/Add"))
        else:
            out.append(helper.make_node("Add", [x, skip], [summed], name=f"{base}/Add"))
        ln_inputs = [summed, gamma] + ([beta] if beta else [])
        out.append(helper.make_node("LayerNormalization", ln_inputs, [outputs[0]], name=f"{base}/LayerNorm",
                                    axis=-1, epsilon=eps))
        split += 1
    if split:
        del graph.node[:]
        graph.node.extend(out)
    return split


def quantize_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    mode: str = "dynamic",
    preset: str | Preset | None = None,
    exclude: Sequence[str] = (),
    per_channel: bool | None = None,
    reduce_range: bool | None = None,
    fuse: bool | None = None,
    model_type: str | None = None,
    quantize_embeddings: bool = True,
    calibration: CalibrationReader | Sequence[Mapping[str, np.ndarray]] | None = None,
    calibration_method: str = "minmax",
    check_feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    block_size: int = 32,
) -> OnnxQuantResult:
    """Quantize one ONNX file to INT8 (see the module docstring for the modes). Generic over encoders and decoders.

    For a decoder with a KV cache, `mode="dynamic"` or `"weight-only"` with `model_type=None` (no fusion) and no
    calibration is the supported path. Intermediate files live in a temporary folder that is removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="edgellm-quant-") as tmp:
        quantizer = OnnxQuantizer(
            src, tmp, mode=mode, preset=preset, per_channel=per_channel, reduce_range=reduce_range, fuse=fuse,
            model_type=model_type, quantize_embeddings=quantize_embeddings, calibration=calibration,
            calibration_method=calibration_method, check_feeds=check_feeds, block_size=block_size,
        )
        return quantizer.quantize(dst, exclude=exclude)
