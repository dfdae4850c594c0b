"""neural-compressor (3.10, PyTorch only) on the torch model, exported to ONNX so that our runtime can run it.

    result = inc_quantize_onnx(model, "model_int8_inc.onnx", method="pt2e-static", tokenizer="tokenizer.json",
                               texts=train_texts, samples=100, max_length=128, task="text-classification")

Methods and what reaches the runtime (bench/results/quantize_minilm.md, by the former bench/quantize_minilm.py):
    rtn          weight-only round-to-nearest INT8 (per output channel). INC's INCWeightOnlyLinear keeps packed int8
                 weights and unpacks them with numpy into a cached FP32 weight on its first call; tracing the
                 unpacking fails (`aten::lift_fresh` has no ONNX export), so the ONNX file holds the de-quantized
                 FP32 weights: INT8 rounding error, but FP32 size and FP32 speed in our runtime.
    gptq         weight-only GPTQ INT8 (calibrated); exported the same way as rtn, with the same limits.
    pt2e-static  PT2E static INT8 (X86InductorQuantizer defaults): `neural_compressor.torch.export` ->
                 prepare -> calibrate -> convert, then `torch.onnx.export(dynamo=True)` writes a QDQ graph
                 (QuantizeLinear / DequantizeLinear around each Linear) that ONNX Runtime fuses into INT8 kernels.
                 The exported graph quantizes FP32 weights at run time; `fold_weight_quantize` stores them as int8.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgellm.config import suggest
from edgellm.console import muted
from edgellm.errors import ConfigError, QuantizationError

__all__ = ["INC_METHODS", "IncResult", "inc_quantize_onnx", "fold_weight_quantize"]

log = logging.getLogger(__name__)

INC_METHODS = ("rtn", "gptq", "pt2e-static")


@dataclass
class IncResult:
    path: Path
    settings: dict[str, Any]
    ops: dict[str, int]
    input_names: list[str]


def _calibration_batches(tokenizer: str | Path, texts: Sequence[str], samples: int, max_length: int,
                         names: list[str], pad_to: int | None = None) -> list[tuple[Any, ...]]:
    import torch

    from edgellm.quantize.calibration import text_feeds

    feeds = text_feeds(tokenizer, texts, samples=samples, max_length=max_length, input_names=names,
                       static_shape=(1, pad_to) if pad_to else None)
    return [tuple(torch.from_numpy(f[n]) for n in names) for f in feeds]


def fold_weight_quantize(path: Path) -> int:
    """Store weights as int8: replace every QuantizeLinear whose input is a float initializer by its result.

    The PT2E graph quantizes its FP32 weights at run time (Q -> DQ on each weight), so the exported file keeps
    FP32 weights; folding gives the int8 file the QDQ format intends (ONNX Runtime computes the same values).
    Returns the number of weights folded.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    folded: list[Any] = []
    new_inits = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or not all(i in inits for i in node.input[:3]) or len(node.input) < 3:
            continue
        w = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)  # float32 math, as ORT rounds
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(inits[node.input[2]])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per channel along `axis`
            shape = [1] * w.ndim
            shape[axis] = scale.size
            scale, zero_b = scale.reshape(shape), zero.astype(np.float32).reshape(shape)
        else:
            zero_b = zero.astype(np.float32)
        info = np.iinfo(zero.dtype)
        q = np.clip(np.round(w / scale) + zero_b, info.min, info.max).astype(zero.dtype)
        new_inits.append(numpy_helper.from_array(q, node.output[0]))
        folded.append(node)
    if not folded:
        return 0
    for node in folded:
        model.graph.node.remove(node)
    model.graph.initializer.extend(new_inits)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.save_model(model, str(path))
    return len(folded)


def _model_folder(model: Any, dst: Path) -> str:
    """A local folder holding the model (its own, or a copy saved beside `dst`)."""
    own = str(getattr(model.config, "_name_or_path", "") or "")
    if own and Path(own).is_dir():
        return own
    folder = dst.parent / f".{dst.stem}-source"
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def inc_quantize_onnx(
    model: Any,
    dst: str | Path,
    *,
    method: str,
    tokenizer: str | Path,
    texts: Sequence[str],
    samples: int,
    max_length: int,
    task: str = "text-classification",
) -> IncResult:
    """Quantize a Hugging Face encoder (torch, FP32) with neural-compressor and export it to ONNX at `dst`.

    The model passed in is not modified. Calibration uses exactly `samples` of `texts` (gptq, pt2e-static).
    """
    import onnx
    import torch

    from edgellm.exporting.onnx import ENCODER_OUTPUTS, EncoderWrapper, encoder_input_names
    from edgellm.quantize.ort import op_counts

    if method not in INC_METHODS:
        raise ConfigError(f"neural-compressor method {method!r} is not one of {list(INC_METHODS)}"
                          f"{suggest(str(method), INC_METHODS)}")
    try:
        from neural_compressor.torch.quantization import (
            GPTQConfig,
            RTNConfig,
            convert,
            get_default_static_config,
            prepare,
        )
    except ImportError as exc:
        raise QuantizationError("the neural-compressor path needs neural-compressor[pt]==3.10 (edgellm[full])") from exc
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    names = encoder_input_names(model)
    output = ENCODER_OUTPUTS[task]
    wrapped = EncoderWrapper(copy.deepcopy(model).eval(), task, names)
    calib = _calibration_batches(tokenizer, texts, samples, max_length, names) if method != "rtn" else []
    fed = 0
    try:
        # neural-compressor logs each step at INFO on a stderr handler of its own (its config, "quantizing layer
        # ...", "Quantization done"): progress reports of a step whose result is checked below. Its WARNING and
        # ERROR logs still show; failures raise.
        with warnings.catch_warnings(), torch.no_grad(), muted("neural_compressor"):
            warnings.simplefilter("ignore")
            if method in ("rtn", "gptq"):
                if method == "rtn":
                    config: Any = RTNConfig(bits=8, group_size=-1, use_sym=True, use_layer_wise=False)
                else:  # INC 3.10's GPTQ resolves `model_path` even without layer-wise mode ('' -> a hub download)
                    config = GPTQConfig(bits=8, group_size=-1, use_sym=True, model_path=_model_folder(model, dst))
                prepared = prepare(wrapped, config)
                for batch in calib:  # gptq collects Hessians here; rtn needs no data
                    prepared(*batch)
                    fed += 1
                quantized = convert(prepared)
                sample = calib[0] if calib else _calibration_batches(tokenizer, texts, 1, max_length, names)[0]
                quantized(*sample)  # INCWeightOnlyLinear unpacks its int8 weight with numpy on the first call and
                # caches it as FP32; tracing the unpacking itself fails (aten::lift_fresh has no ONNX export)
                dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
                dynamic[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
                torch.onnx.export(quantized, sample, str(dst), input_names=names, output_names=[output],
                                  dynamic_axes=dynamic, opset_version=17, dynamo=False)
            else:
                from neural_compressor.torch.export import export

                batch_dim = torch.export.Dim("batch", min=1, max=1024)
                seq_dim = torch.export.Dim("sequence", min=2, max=max_length)
                flat = tuple({0: batch_dim, 1: seq_dim} for _ in names)
                example = _calibration_batches(tokenizer, texts, 1, max_length, names, pad_to=max_length)[0]
                example = tuple(torch.cat([t, t]) for t in example)  # batch 2 so that batch stays symbolic
                graph = export(wrapped, example_inputs=example, dynamic_shapes=(flat,))  # forward(*args): one entry
                if graph is None:
                    raise QuantizationError("neural-compressor could not export the model to a PT2E graph")
                prepared = prepare(graph, get_default_static_config())
                for batch in calib:
                    prepared(*batch)
                    fed += 1
                quantized = convert(prepared)
                program = torch.export.export(quantized, example, dynamic_shapes=flat)  # the graph takes flat args
                torch.onnx.export(program, example, str(dst), input_names=names, output_names=[output],
                                  dynamo=True, external_data=False, optimize=True)
                folded = fold_weight_quantize(dst)
    except (QuantizationError, ConfigError):
        raise
    except Exception as exc:
        raise QuantizationError(f"neural-compressor {method} on {type(model).__name__} failed: {exc}") from exc
    graph_proto = onnx.load(str(dst), load_external_data=False)
    counts: dict[str, int] = {}
    for (_, op), n in op_counts(graph_proto).items():
        counts[op] = counts.get(op, 0) + n
    from importlib.metadata import version

    settings = {
        "tool": "neural-compressor", "tool_version": version("neural-compressor"), "mode":
        "static" if method == "pt2e-static" else "weight-only", "method": method,
        "export": "torch.onnx.export(dynamo=True) of the converted PT2E graph" if method == "pt2e-static"
        else "torch.onnx.export of INCWeightOnlyLinear: de-quantized FP32 weights (no INT8 in the ONNX file)",
    }
    if calib:
        settings["calibration"] = {"samples": fed}
    if method == "pt2e-static":
        settings["int8_weights_folded"] = folded
    return IncResult(dst, settings, counts, names)
