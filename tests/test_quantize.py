"""INT8 quantization: node counts per mode, exclusions, calibration counts, OpenVINO INT8 IR, presets, accuracy
control, the artifact verb and the CLI, and every bad input with its typed error.

The tiny classifier (tests/conftest.py) has 2 layers: 12 MatMuls with weights (q, k, v, attention output, FFN in,
FFN out per layer), 2 Gemms (pooler, classifier), 4 activation x activation MatMuls (attention scores and context)
and 3 embedding tables (word, position, token type).
"""

from __future__ import annotations

import collections
import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest

from edgellm.artifact import read_manifest, verify_artifact, write_manifest
from edgellm.errors import (
    ConfigError,
    DataError,
    InputError,
    OutputExistsError,
    QuantizationError,
    UnsupportedTargetError,
)
from edgellm.quantize import (
    PRESETS,
    CalibrationReader,
    QuantData,
    detect_preset,
    onnx_sensitivity,
    quantize,
    quantize_onnx,
    quantize_openvino,
    search_fallback,
    text_feeds,
)
from edgellm.quantize.ort import OnnxQuantizer
from edgellm.recipe import QuantizeConfig

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
WEIGHT_MATMULS = 12
GEMMS = 2
TABLES = 3
FFN_OUT = "/model/bert/encoder/layer.1/output/dense/MatMul"
_WORDS = ("the a and but not film movie plot story great good bad awful boring fun love hate best worst ever never "
          "very really so too acting script music ending scene time watch again funny sad dull brilliant beautiful "
          "terrible waste").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(3, 14))) for _ in range(n)]


def ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def feeds_for(art: Path, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    return text_feeds(art / "tokenizer.json", sentences(n, seed), samples=n, max_length=64, input_names=INPUTS)


def run_onnx(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0] for f in feeds])


@pytest.fixture(scope="module")
def classifier_artifact(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny classifier with the full graph (every layer at every position), which the counts here describe;
    the [CLS]-only last layer is quantized in test_dynamic_fused_cls_only."""
    from edgellm.exporting import export

    out = tmp_path_factory.mktemp("artifacts") / "classifier-full"
    export(tiny_classifier_dir, out, task="text-classification", cls_only=False)
    return out


@pytest.fixture(scope="module")
def fp32_onnx(classifier_artifact: Path) -> Path:
    return classifier_artifact / "model.onnx"


# -- modes: what each leaves in the graph ---------------------------------------------------------------------------


def test_dynamic_unfused_node_counts(fp32_onnx: Path, classifier_artifact: Path, tmp_path: Path) -> None:
    r = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="dynamic", preset="avx512-vnni", fuse=False)
    assert r.ops["MatMulInteger"] == WEIGHT_MATMULS + GEMMS  # Gemm -> MatMul first, as ORT's dynamic quantizer does
    assert r.ops["DynamicQuantizeLinear"] == 10  # one per distinct activation: 4 per layer + pooler + classifier
    assert r.ops["MatMul"] == 4  # activation x activation MatMuls stay float (MatMulConstBOnly)
    assert r.ops["DequantizeLinear"] == TABLES  # int8 embedding tables, de-quantized after the Gather
    assert r.settings["per_channel"] is True and r.settings["reduce_range"] is False and r.settings["fused"] is False
    feeds = feeds_for(classifier_artifact, 6)
    np.testing.assert_allclose(run_onnx(r.path, feeds), run_onnx(fp32_onnx, feeds), atol=0.02)


def test_dynamic_fused_node_counts(fp32_onnx: Path, classifier_artifact: Path, tmp_path: Path) -> None:
    feeds = feeds_for(classifier_artifact, 6)
    r = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="dynamic", preset="avx512-vnni", model_type="bert",
                      check_feeds=feeds)
    assert r.settings["fused"] is True
    assert r.ops["QAttention"] == 2  # q, k, v and the attention itself, one per layer
    assert r.ops["QEmbedLayerNormalization"] == 1  # the three embedding tables + LayerNorm, int8
    assert r.ops["MatMulInteger"] == 3 * 2 + GEMMS  # attention output, FFN in, FFN out per layer; pooler, classifier
    assert "MatMul" not in r.ops and "Attention" not in r.ops
    np.testing.assert_allclose(run_onnx(r.path, feeds), run_onnx(fp32_onnx, feeds), atol=0.02)



def test_dynamic_fused_cls_only(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    """The [CLS]-only last layer: the first layer still fuses into QAttention; the last one's q / k / v and FFN
    MatMuls are INT8 as plain DynamicQuantizeMatMul work; logits stay close to the float model's."""
    from edgellm.exporting import export

    art = tmp_path / "cls"
    export(tiny_classifier_dir, art, task="text-classification", formats=("onnx",))
    assert read_manifest(art).model("onnx-fp32").metrics["cls_only_last_layer"] is True
    feeds = feeds_for(art, 6)
    r = quantize_onnx(art / "model.onnx", tmp_path / "q.onnx", mode="dynamic", preset="avx512-vnni",
                      model_type="bert", check_feeds=feeds)
    assert r.settings["fused"] is True and r.ops["QAttention"] == 1
    assert r.ops["MatMulInteger"] == 3 + 6 + GEMMS  # layer 0: out, FFN in/out; layer 1: q, k, v, out, FFN in/out
    np.testing.assert_allclose(run_onnx(r.path, feeds), run_onnx(art / "model.onnx", feeds), atol=0.02)


def test_runtime_session_folds_biases_and_keeps_layer_norms_split(fp32_onnx: Path, classifier_artifact: Path,
                                                                   tmp_path: Path) -> None:
    """What ONNX Runtime runs for the fused INT8 graph: with the runtime's CPU session settings every residual-branch
    bias Add is folded into DynamicQuantizeMatMul and no (slow) SkipLayerNormalization comes back; a default
    session fuses it back."""
    import onnxruntime as ort

    from edgellm.runtime.ort import CPU_DISABLED_OPTIMIZERS

    from onnx import numpy_helper

    # The tiny model's biases are all zero and its LayerNorm scales all one, so the exporter shares one tensor of
    # each among all users; give every user its own values, as a trained model has.
    model = onnx.load(str(fp32_onnx))
    vectors = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) == 1
               and i.data_type == onnx.TensorProto.FLOAT}
    rng = np.random.default_rng(0)
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in vectors:
                own = vectors[name] + rng.normal(0, 0.02, vectors[name].shape).astype(np.float32)
                node.input[k] = f"{name}/{node.name}/{k}"
                model.graph.initializer.append(numpy_helper.from_array(own, node.input[k]))
    onnx.save(model, str(tmp_path / "biased.onnx"))
    r = quantize_onnx(tmp_path / "biased.onnx", tmp_path / "q.onnx", mode="dynamic", preset="avx512-vnni",
                      model_type="bert")

    def session_ops(disabled: list[str]) -> collections.Counter:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / "session.onnx")
        ort.InferenceSession(str(r.path), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return ops(tmp_path / "session.onnx")

    ours = session_ops(list(CPU_DISABLED_OPTIMIZERS))
    assert "SkipLayerNormalization" not in ours and ours["LayerNormalization"] == 2 * 2
    assert ours["Add"] == 2 * 2  # only the residual sums; the biases went into the quantized MatMuls
    assert ours["DynamicQuantizeMatMul"] == 3 * 2 + GEMMS
    assert session_ops([])["SkipLayerNormalization"] == 2 * 2
    feeds = feeds_for(classifier_artifact, 4)
    backend_free = run_onnx(r.path, feeds)
    session = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))
    np.testing.assert_allclose(np.concatenate([session.run(None, f)[0] for f in feeds]), backend_free, atol=1e-4)

def test_static_qdq_node_counts(fp32_onnx: Path, classifier_artifact: Path, tmp_path: Path) -> None:
    reader = CalibrationReader(feeds_for(classifier_artifact, 12))
    r = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="static", preset="avx512-vnni", calibration=reader)
    model = onnx.load(str(r.path))
    inits = {i.name: i for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    types = collections.Counter(inits[n.input[0]].data_type for n in weight_dq)
    # int8 weights, uint8 tables (quantized as activations), int32 Gemm biases
    assert types == {onnx.TensorProto.INT8: WEIGHT_MATMULS + GEMMS, onnx.TensorProto.UINT8: TABLES,
                     onnx.TensorProto.INT32: GEMMS}
    per_channel = [n for n in weight_dq if inits[n.input[0]].data_type == onnx.TensorProto.INT8
                   and onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1]
    assert len(per_channel) == WEIGHT_MATMULS + GEMMS  # one scale per output channel (tables: one per tensor)
    # every quantized activation is one QuantizeLinear -> DequantizeLinear pair
    assert r.ops["QuantizeLinear"] == r.ops["DequantizeLinear"] - len(weight_dq) == 27
    assert r.ops["MatMul"] == WEIGHT_MATMULS + 4  # QDQ keeps the float op between DQ and Q
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    attention = [n for n in model.graph.node if n.op_type == "MatMul" and "attention/self/MatMul" in n.name]
    assert len(attention) == 4 and all(producers.get(i) != "DequantizeLinear" for n in attention for i in n.input)
    assert r.settings["activation_matmuls"] == "float"  # CPU presets keep activation x activation MatMuls float
    assert r.calibration_fed == 12 and reader.fed == 12 and reader.passes == 1
    assert r.settings["calibration"] == {"method": "minmax", "samples": 12}
    feeds = feeds_for(classifier_artifact, 6, seed=1)
    np.testing.assert_allclose(run_onnx(r.path, feeds), run_onnx(fp32_onnx, feeds), atol=0.05)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_calibration_methods(fp32_onnx: Path, classifier_artifact: Path, tmp_path: Path, method: str) -> None:
    r = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="static", preset="avx512-vnni",
                      calibration=feeds_for(classifier_artifact, 8), calibration_method=method)
    assert r.calibration_fed == 8
    assert r.settings["calibration"]["method"] == method
    assert r.ops["QuantizeLinear"] == 27


def test_weight_only_node_counts(fp32_onnx: Path, tmp_path: Path) -> None:
    r = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="weight-only", preset="avx512-vnni")
    model = onnx.load(str(r.path))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == WEIGHT_MATMULS  # Gemms stay Gemm; MatMulNBits handles MatMul only
    attrs = {a.name: a.i for a in nbits[0].attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    assert r.settings["quantize_embeddings"] is False  # GatherBlockQuantized is 4-bit only in ORT 1.32
    assert "DynamicQuantizeLinear" not in r.ops and "QuantizeLinear" not in r.ops


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_excluded_node_stays_float(fp32_onnx: Path, classifier_artifact: Path, tmp_path: Path, mode: str) -> None:
    calib = feeds_for(classifier_artifact, 6) if mode == "static" else None
    r = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode=mode, preset="avx512-vnni", fuse=False,
                      calibration=calib, exclude=[FFN_OUT])
    model = onnx.load(str(r.path))
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    (node,) = [n for n in model.graph.node if n.name == FFN_OUT]
    assert node.op_type == "MatMul" and node.input[1] in floats  # its weight is still the FP32 initializer
    assert r.excluded == [FFN_OUT] and r.settings["excluded_nodes"] == [FFN_OUT]
    if mode == "dynamic":
        assert r.ops["MatMulInteger"] == WEIGHT_MATMULS + GEMMS - 1
    else:
        producers = {o: n for n in model.graph.node for o in n.output}
        assert producers[node.input[0]].op_type != "DequantizeLinear"  # no QDQ on its activation either


def test_unknown_excluded_node_is_a_config_error(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not in the graph being quantized; did you mean '/model/bert/encoder/layer"
                                          r"\.1/output/dense/MatMul'"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="dynamic", preset="avx512-vnni", fuse=False,
                      exclude=["/model/bert/encoder/layer.1/output/dense/Matmul"])


# -- calibration ----------------------------------------------------------------------------------------------------


def test_calibration_feeds_exactly_the_samples_asked(classifier_artifact: Path) -> None:
    texts = sentences(40)
    feeds = text_feeds(classifier_artifact / "tokenizer.json", texts, samples=7, max_length=64, input_names=INPUTS)
    assert len(feeds) == 7
    reader = CalibrationReader(feeds)
    got = [reader.get_next() for _ in range(9)]
    assert sum(g is not None for g in got) == 7 and got[7] is None and got[8] is None
    assert reader.fed == 7 and reader.passes == 1
    reader.rewind()
    assert len(list(reader)) == 7 and reader.fed == 14
    assert [f["input_ids"].shape[0] for f in feeds] == [1] * 7  # one text per sample, its own length
    static = text_feeds(classifier_artifact / "tokenizer.json", texts, samples=3, max_length=64,
                        input_names=INPUTS, static_shape=(2, 16))
    assert {f["input_ids"].shape for f in static} == {(2, 16)}


@pytest.mark.parametrize("texts, samples, error", [
    ([], 5, "calibration data is empty"),  # no data at all
    (["a film", "a plot", "a story"], 10, "asks for 10 samples but the data holds 3 texts"),  # fewer than asked
    ([("a film", 1), ("bad", 0)], 2, "not a str"),  # (text, label) pairs instead of texts
    (["这部电影的配乐非常动人", "演员的表演也很出色"], 2, "unknown to this model's tokenizer"),  # another language
    ("just one string", 1, "not one string"),  # a bare string
])
def test_calibration_bad_inputs(classifier_artifact: Path, texts: Any, samples: int, error: str) -> None:
    with pytest.raises(DataError, match=error):
        text_feeds(classifier_artifact / "tokenizer.json", texts, samples=samples, max_length=64, input_names=INPUTS)


def test_calibration_feeds_of_another_model(fp32_onnx: Path, tmp_path: Path) -> None:
    kv = [{"input_ids": np.ones((1, 4), np.int64), "past_key_values.0.key": np.zeros((1, 2, 4, 8), np.float32)}]
    with pytest.raises(DataError, match="made for another model or task"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="static", preset="avx512-vnni", calibration=kv)
    with pytest.raises(QuantizationError, match="static INT8 needs calibration data"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="static", preset="avx512-vnni")


def test_no_temporary_files_in_the_working_folder(fp32_onnx: Path, classifier_artifact: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    quantize_onnx(fp32_onnx, tmp_path / "s.onnx", mode="static", preset="avx512-vnni",
                  calibration=feeds_for(classifier_artifact, 4))
    quantize_onnx(fp32_onnx, tmp_path / "d.onnx", mode="dynamic", preset="avx512-vnni", model_type="bert")
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "d.onnx", "s.onnx"]


# -- already quantized, presets and targets -------------------------------------------------------------------------


def test_already_quantized_inputs_are_refused(fp32_onnx: Path, classifier_artifact: Path, tmp_path: Path) -> None:
    q = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="dynamic", preset="avx512-vnni", fuse=False)
    with pytest.raises(QuantizationError, match=r"already quantized \(it holds 3 DequantizeLinear, 10 "
                                                r"DynamicQuantizeLinear, 14 MatMulInteger\)"):
        quantize_onnx(q.path, tmp_path / "qq.onnx", mode="dynamic", preset="avx512-vnni")
    ov = quantize_openvino(classifier_artifact / "openvino_model.xml", tmp_path / "ov.xml", mode="weight-only",
                           preset="avx512-vnni")
    with pytest.raises(QuantizationError, match=r"already quantized \(0 FakeQuantize, \d+ int8/int4 weight"):
        quantize_openvino(ov.files[0], tmp_path / "ov2.xml", mode="weight-only", preset="avx512-vnni")


def test_presets_table_and_for_target(fp32_onnx: Path, tmp_path: Path) -> None:
    assert list(PRESETS) == ["avx512-vnni", "avx2", "arm64", "intel-npu", "qnn-htp"]
    flags = open("/proc/cpuinfo").read()
    expected = "avx512-vnni" if "avx512_vnni" in flags or "avx_vnni" in flags else "avx2"
    assert detect_preset() == expected
    config = QuantizeConfig.for_target("qnn-htp")
    assert (config.preset, config.mode, config.backends) == ("qnn-htp", "static", ["onnxruntime"])
    r = quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="dynamic", preset="avx2", fuse=False)
    assert r.settings["reduce_range"] is True and r.settings["preset"] == "avx2"
    with pytest.raises(UnsupportedTargetError, match="unknown quantization preset 'avx-2'; did you mean 'avx2'"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", preset="avx-2")
    with pytest.raises(ConfigError, match=r"calibration_samples = 0 is outside \[1, inf\]"):
        QuantizeConfig.for_target("avx2", calibration_samples=0)
    with pytest.raises(ConfigError, match="preset = 'avx512' is not a known preset"):
        from edgellm.config import from_dict

        from_dict(QuantizeConfig, {"preset": "avx512"})


def test_ops_a_target_cannot_run(fp32_onnx: Path, classifier_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTargetError, match=r"preset 'qnn-htp' runs INT8 modes \['static'\], not "
                                                     r"'dynamic': its runtime has no dynamic quantization ops"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="dynamic", preset="qnn-htp")
    with pytest.raises(UnsupportedTargetError, match="makes INT8 models for \\['openvino'\\], not ONNX Runtime"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="static", preset="intel-npu")
    fused = OnnxQuantizer(fp32_onnx, tmp_path / "work", mode="dynamic", preset="avx512-vnni", model_type="bert")
    assert fused.fused  # a float graph with com.microsoft Attention, BiasGelu, SkipLayerNormalization ...
    with pytest.raises(UnsupportedTargetError, match=r"preset 'qnn-htp' cannot run: \['com.microsoft.Attention', "
                                                     r"'com.microsoft.BiasGelu', 'com.microsoft.EmbedLayerNorm"):
        quantize_onnx(fused.prepared, tmp_path / "q.onnx", mode="static", preset="qnn-htp",
                      calibration=feeds_for(classifier_artifact, 2))
    r = quantize_onnx(fp32_onnx, tmp_path / "htp.onnx", mode="static", preset="qnn-htp",
                      calibration=feeds_for(classifier_artifact, 4))
    model = onnx.load(str(r.path))
    assert {n.domain for n in model.graph.node} <= {""}
    weights = {i.data_type for i in model.graph.initializer if i.name.endswith("_quantized")}
    assert weights == {onnx.TensorProto.UINT8, onnx.TensorProto.INT32}  # HTP: uint8 weights, int32 biases
    assert r.ops["QuantizeLinear"] == 27 + 12  # attention MatMuls too: 3 more activations each
    assert r.settings["activation_matmuls"] == "int8"


# -- OpenVINO -------------------------------------------------------------------------------------------------------


def _constants(xml: Path) -> collections.Counter:
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return collections.Counter(op.get_element_type().get_type_name() for op in model.get_ops()
                               if op.get_type_name() == "Constant")


def test_openvino_int8_ir(classifier_artifact: Path, tmp_path: Path) -> None:
    xml = classifier_artifact / "openvino_model.xml"
    assert _constants(xml)["i8"] == 0
    static = quantize_openvino(xml, tmp_path / "s.xml", mode="static", preset="avx512-vnni",
                               calibration=feeds_for(classifier_artifact, 9))
    assert static.ops["FakeQuantize"] == WEIGHT_MATMULS + GEMMS  # one per quantized activation input
    assert _constants(static.files[0])["i8"] == WEIGHT_MATMULS + GEMMS + TABLES  # int8 weights in the IR
    assert static.calibration_fed == 9
    assert static.inference_precision == "f32" and static.settings["target_device"] == "CPU"
    assert [p.name for p in static.files] == ["s.xml", "s.bin"]
    wo = quantize_openvino(xml, tmp_path / "w.xml", mode="weight-only", preset="avx512-vnni")
    assert "FakeQuantize" not in wo.ops
    assert _constants(wo.files[0])["u8"] == 2 * (WEIGHT_MATMULS + GEMMS + TABLES)  # weights and zero points
    with pytest.raises(QuantizationError, match="OpenVINO static INT8 needs calibration data"):
        quantize_openvino(xml, tmp_path / "x.xml", mode="static", preset="avx512-vnni")
    with pytest.raises(UnsupportedTargetError, match="not OpenVINO"):
        quantize_openvino(xml, tmp_path / "x.xml", mode="static", preset="qnn-htp")


# -- accuracy control ------------------------------------------------------------------------------------------------


def test_search_fallback_bisects_to_the_fewest_ops() -> None:
    calls: list[int] = []

    def trial(kept: list[str]) -> float:
        calls.append(len(kept))
        return 90.0 + len(kept)  # each op kept in float wins back one point

    result = search_fallback(list("abcdefgh"), trial, baseline=100.0, tolerance=3.0, limit=8)
    assert result.excluded == list("abcdefg") and result.metric == 97.0 and result.drop == 3.0
    assert calls == [0, 1, 2, 4, 8, 6, 7]  # doubling, then bisection between 4 and 8
    with pytest.raises(QuantizationError, match=r"tolerance of 3.0 points cannot be met: FP32 scores 100.00; with up "
                                                r"to 4 of the 8 quantizable ops kept in float the smallest drop is "
                                                r"6.00 points \(4 ops in float\)"):
        search_fallback(list("abcdefgh"), trial, baseline=100.0, tolerance=3.0, limit=4)
    with pytest.raises(ConfigError, match="tolerance = -0.5 is negative"):
        search_fallback(list("ab"), trial, baseline=100.0, tolerance=-0.5, limit=2)


def _two_matmuls(tmp_path: Path, w1: np.ndarray, w2: np.ndarray) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
         helper.make_node("MatMul", ["h", "w2"], ["y"], name="second")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_sensitivity_ranks_the_outlier_op_first(tmp_path: Path) -> None:
    from edgellm.quantize.ort import QuantNode

    rng = np.random.default_rng(0)
    nodes = [QuantNode("first", "MatMul", "w1", "x"), QuantNode("second", "MatMul", "w2", "h")]
    w1 = rng.normal(size=(16, 16)).astype(np.float32)
    w2 = rng.normal(size=(16, 16)).astype(np.float32)
    # an activation outlier: one input channel of x is 300x the others (and its weights are 0, as for the "massive
    # activations" of transformers); a per-tensor activation scale wipes out the other channels, so the op reading
    # x loses its output while the op after it (whose input has no outlier) does not
    x = rng.normal(size=(4, 8, 16)).astype(np.float32)
    x[..., 3] *= 300.0
    w1[3, :] = 0.0
    feeds = [{"x": row} for row in x]
    ranking = onnx_sensitivity(_two_matmuls(tmp_path, w1, w2), nodes, feeds, mode="dynamic", per_channel=True,
                               reduce_range=False)
    assert [r["node"] for r in ranking] == ["first", "second"]
    assert ranking[0]["error"] > 5 * ranking[1]["error"]
    # a weight outlier: per-tensor weight scales lose the other weights of the op, per-channel scales do not
    w2[3, 5] = 400.0
    feeds = [{"x": rng.normal(size=(8, 16)).astype(np.float32)} for _ in range(4)]
    path = _two_matmuls(tmp_path, w1, w2)
    per_tensor = onnx_sensitivity(path, nodes, feeds, mode="dynamic", per_channel=False, reduce_range=False)
    per_channel = onnx_sensitivity(path, nodes, feeds, mode="dynamic", per_channel=True, reduce_range=False)
    assert per_tensor[0]["node"] == "second" and per_tensor[0]["error"] > 5 * per_tensor[1]["error"]
    assert {r["node"]: r["error"] for r in per_channel}["second"] < per_tensor[0]["error"] / 5


@pytest.fixture(scope="module")
def sharp_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier with large random weights (initializer_range 0.3): its predictions vary by text and INT8
    flips some of them, unlike the near-constant default tiny model."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from edgellm.exporting import export
    from tests.conftest import save_tiny_tokenizer

    root = tmp_path_factory.mktemp("sharp")
    torch.manual_seed(0)
    tok = save_tiny_tokenizer(root / "model")
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.3,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).eval().save_pretrained(root / "model")
    export(root / "model", root / "art", task="text-classification", formats=("onnx",), cls_only=False)
    return root / "art"


@pytest.fixture(scope="module")
def sharp_data(sharp_artifact: Path) -> QuantData:
    """Validation labelled with the FP32 model's own predictions: FP32 scores 100, every INT8 flip costs."""
    from edgellm.runtime import load

    texts = sentences(300)
    labels = load(sharp_artifact, model="onnx-fp32").scores(texts).argmax(1).tolist()
    return QuantData(sentences(60, seed=7), texts, labels)


def test_accuracy_aware_meets_its_tolerance(sharp_artifact: Path, sharp_data: QuantData, tmp_path: Path) -> None:
    config = QuantizeConfig(backends=["onnxruntime"], per_channel=False, reduce_range=True, tolerance=1.0,
                            max_fallback=1.0, preset="avx512-vnni")
    manifest = quantize(sharp_artifact, tmp_path / "out", config=config, data=sharp_data)
    entry = manifest.model("onnx-int8")
    control = entry.quantization["accuracy_control"]
    assert control["trials"][0]["float_ops"] == 0 and control["trials"][0]["drop"] > 1.0  # plain INT8 fails
    assert 0 < len(control["fell_back"]) < 11 and entry.metrics["drop"] <= 1.0
    assert entry.metrics["drop"] == pytest.approx(control["drop"])
    assert control["most_sensitive"][0]["error"] >= control["most_sensitive"][-1]["error"]
    graph = onnx.load(str(tmp_path / "out" / entry.path)).graph
    kept = {n.name: n.op_type for n in graph.node if n.name in control["fell_back"]}
    assert set(kept) == set(control["fell_back"])
    assert set(kept.values()) <= {"MatMul", "Attention", "EmbedLayerNormalization"}  # still float ops
    assert entry.quantization["excluded_nodes"] == control["fell_back"]


def test_dynamic_int8_results_do_not_depend_on_the_batch(sharp_artifact: Path, sharp_data: QuantData,
                                                         tmp_path: Path) -> None:
    """Dynamic INT8 computes one activation scale per tensor per call, so a batch's texts share it: the runtime
    runs such a model one text per call unless asked otherwise, and the quantize stage scores it that way."""
    from edgellm.evaluate import evaluate_classifier
    from edgellm.runtime import load

    config = QuantizeConfig(backends=["onnxruntime"], preset="avx512-vnni")
    manifest = quantize(sharp_artifact, tmp_path / "out", config=config, data=sharp_data)
    texts = sharp_data.validation
    clf = load(tmp_path / "out", model="onnx-int8")
    assert clf.describe()["batch_size"] == 1 and clf.describe()["batch_invariant"] is True
    alone = np.concatenate([clf.scores([t]) for t in texts])
    np.testing.assert_array_equal(clf.scores(texts), alone)
    np.testing.assert_array_equal(clf.scores(texts[::-1]), alone[::-1])  # other batch mates, same rows
    batched = clf.scores(texts, batch_size=32)  # asked for: faster, and each text's row depends on its batch
    assert np.abs(batched - alone).max() > 1e-4
    assert load(tmp_path / "out", model="onnx-int8", batch_size=32).describe()["batch_invariant"] is False
    fp32 = load(tmp_path / "out", model="onnx-fp32")
    assert fp32.describe()["batch_size"] == 32 and fp32.describe()["batch_invariant"] is True
    recorded = manifest.model("onnx-int8").metrics["validation"]["accuracy"]
    assert recorded == evaluate_classifier(clf, texts, sharp_data.labels)["accuracy"]
    with pytest.raises(InputError, match="batch_size must be a positive int"):
        clf.scores(texts, batch_size=0)


def test_accuracy_aware_says_when_it_cannot(sharp_artifact: Path, sharp_data: QuantData, tmp_path: Path) -> None:
    config = QuantizeConfig(backends=["onnxruntime"], per_channel=False, reduce_range=True, tolerance=0.0,
                            max_fallback=0.0, preset="avx512-vnni")
    with pytest.raises(QuantizationError, match=r"onnx-int8: the accuracy tolerance of 0.0 points cannot be met: "
                                                r"FP32 scores 100.00; with up to 0 of the 11 quantizable ops"):
        quantize(sharp_artifact, tmp_path / "out", config=config, data=sharp_data)
    assert not (tmp_path / "out").exists()


# -- the artifact verb ----------------------------------------------------------------------------------------------


def _data(n_cal: int = 40) -> QuantData:
    val = sentences(30, seed=3)
    return QuantData(sentences(n_cal, seed=2), val, ["positive" if i % 2 else "negative" for i in range(len(val))])


def test_quantize_writes_a_verified_artifact(classifier_artifact: Path, tmp_path: Path) -> None:
    from edgellm.runtime import load

    before = json.loads((classifier_artifact / "edgellm.json").read_text())
    config = QuantizeConfig(mode="static", calibration_samples=20, preset="avx512-vnni", fp16=True)
    manifest = quantize(classifier_artifact, tmp_path / "out", config=config, data=_data())
    assert [m.name for m in manifest.models] == ["onnx-fp32", "openvino-fp32", "onnx-int8", "openvino-int8",
                                                 "openvino-fp16"]
    assert manifest.default_model == "onnx-int8"
    verify_artifact(tmp_path / "out")
    onnx_int8, ov_int8 = manifest.model("onnx-int8"), manifest.model("openvino-int8")
    assert (onnx_int8.path, onnx_int8.precision, onnx_int8.backend) == ("model_int8.onnx", "int8", "onnxruntime")
    assert ov_int8.files == ["openvino_model_int8.xml", "openvino_model_int8.bin"]
    assert ov_int8.inference_precision == "f32" and manifest.model("openvino-fp16").precision == "fp16"
    for entry in (onnx_int8, ov_int8):
        assert entry.quantization["calibration"]["samples"] == 20
        assert entry.quantization["calibration"]["method"] == "minmax"
        assert entry.quantization["excluded_nodes"] == []
        assert entry.metrics["validation"]["examples"] == 30
        assert entry.metrics["drop"] == pytest.approx(entry.metrics["metric_fp32"] - entry.metrics["validation"]["accuracy"])
        assert 0 < entry.metrics["size_vs_fp32"] < 1
    assert ov_int8.metrics["calibration_fed"] == 20
    assert manifest.model("onnx-fp32").metrics["validation"]["examples"] == 30
    assert set(manifest.metrics["quantize"]["models"]) == {"onnx-int8", "openvino-int8"}
    assert load(tmp_path / "out").classify(["a great film"])[0]["label"] in ("negative", "positive")
    assert json.loads((classifier_artifact / "edgellm.json").read_text()) == before  # the source is untouched


def test_quantize_embedder_scores_cosine_to_fp32(embedder_artifact: Path, tmp_path: Path) -> None:
    data = QuantData([], sentences(20, seed=4))
    manifest = quantize(embedder_artifact, tmp_path / "out", data=data,
                        config=QuantizeConfig(backends=["onnxruntime"], preset="avx512-vnni"))
    entry = manifest.model("onnx-int8")
    assert manifest.metrics["quantize"]["metric"] == "cosine_to_fp32_x100"
    assert 0.99 < entry.metrics["validation"]["mean_cosine_to_fp32"] <= 1.0
    assert entry.quantization["fused"] is True  # BERT encoder graphs are fused before quantizing


def _replace_with_int8(artifact: Path, tmp_path: Path) -> Path:
    """A copy of the artifact whose 'fp32' ONNX model is really INT8 (hashes rewritten to match)."""
    copy = tmp_path / "fake"
    shutil.copytree(artifact, copy)
    quantize_onnx(artifact / "model.onnx", tmp_path / "int8.onnx", mode="dynamic", preset="avx512-vnni")
    shutil.copy(tmp_path / "int8.onnx", copy / "model.onnx")
    write_manifest(copy, read_manifest(copy))
    return copy


@pytest.mark.parametrize("case, error, match", [
    ("empty calibration", DataError, "calibration data is empty"),  # static mode with no training texts
    ("label out of range", DataError, "label 5 is out of range for the model's 2 classes"),  # another task's ids
    ("unknown label", DataError, "label 'spam' is not one of the model's classes"),  # another task's names
    ("scores as labels", DataError, "scores or other values are data of another task"),  # regression targets
    ("data of another task", DataError, "the data is for feature-extraction"),  # TaskData of another task
    ("negative tolerance", ConfigError, "tolerance = -1.0 is negative"),  # a tolerance below zero
    ("in place", OutputExistsError, "in place replaces it"),  # no overwrite for in place
    ("already quantized", QuantizationError, "is already quantized"),  # the FP32 entry holds an INT8 graph
    ("unknown preset", UnsupportedTargetError, "unknown quantization preset 'avx9'"),  # a preset key that is not
    ("preset without backend", UnsupportedTargetError, "not for onnxruntime"),  # intel-npu makes no ORT INT8
])
def test_quantize_bad_inputs(classifier_artifact: Path, tmp_path: Path, case: str, error: type, match: str) -> None:
    data: Any = _data()
    config = QuantizeConfig(backends=["onnxruntime"], preset="avx512-vnni")
    artifact, output = classifier_artifact, tmp_path / "out"
    if case == "empty calibration":
        data, config.mode = QuantData([], data.validation, data.labels), "static"
    elif case == "label out of range":
        data.labels[3] = 5
    elif case == "unknown label":
        data.labels[0] = "spam"
    elif case == "scores as labels":
        data.labels = [0.7] * len(data.validation)
    elif case == "data of another task":
        split = SimpleNamespace(texts=data.validation, labels=None)
        data = SimpleNamespace(task="feature-extraction", train=split, validation=split, labels=None)
    elif case == "negative tolerance":
        config.tolerance = -1.0
    elif case == "in place":
        output = None
    elif case == "already quantized":
        artifact = _replace_with_int8(classifier_artifact, tmp_path)
    elif case == "unknown preset":
        config.preset = "avx9"
    elif case == "preset without backend":
        config.preset = "intel-npu"
    with pytest.raises(error, match=match):
        quantize(artifact, output, config=config, data=data)
    assert not (tmp_path / "out").exists()


def test_cli_quantize(classifier_artifact: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgellm.cli import cli

    rows = ["text,label"] + [f"{t},{'positive' if i % 2 else 'negative'}" for i, t in enumerate(sentences(60, 5))]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["quantize", str(classifier_artifact), "-o", str(out), "--backend",
                                      "onnxruntime", "--preset", "avx512-vnni", "--data-path",
                                      str(tmp_path / "reviews.csv")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("onnx-int8          dynamic     accuracy")
    assert read_manifest(out).model("onnx-int8").metrics["validation"]["examples"] == 6
    bad = CliRunner().invoke(cli, ["quantize", str(classifier_artifact), "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1
    assert bad.output.startswith("error (DataError): the artifact does not record a data set")


def test_quantize_onnx_on_a_decoder_with_kv_cache(tmp_path: Path) -> None:
    """The causal-LM path calls quantize_onnx on its decoder (inputs past_key_values.N.key / value)."""
    import onnxruntime as ort
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    decoder = pytest.importorskip("edgellm.exporting.decoder")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=True)).eval()
    spec = decoder.export_decoder_onnx(model, tmp_path / "dec.onnx", context_length=64)
    float_session = ort.InferenceSession(str(tmp_path / "dec.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(float_session.get_inputs(), decoder._sample_inputs(spec))}
    assert "past_key_values.0.key" in feeds
    expected = float_session.run(None, feeds)[0]
    for mode, op in (("dynamic", "MatMulInteger"), ("weight-only", "MatMulNBits")):
        r = quantize_onnx(tmp_path / "dec.onnx", tmp_path / f"{mode}.onnx", mode=mode, preset="avx512-vnni")
        assert r.ops[op] == 2 * 4 + 1  # fused qkv, o, fused gate+up, down per layer + the tied LM head
        got = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_allclose(got, expected, atol=0.05)
        assert (got.argmax(-1) == expected.argmax(-1)).all()


# -- neural-compressor ----------------------------------------------------------------------------------------------


def test_fold_weight_quantize_stores_int8_weights(tmp_path: Path) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgellm.quantize.inc import fold_weight_quantize

    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=1),
         helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=1),
         helper.make_node("MatMul", ["x", "wd"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(np.zeros(4, np.int8), "z")])
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = {"x": rng.normal(size=(3, 8)).astype(np.float32)}
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert fold_weight_quantize(path) == 1
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul"]
    assert {i.name: i.data_type for i in model.graph.initializer}["wq"] == TensorProto.INT8
    assert "w" not in {i.name for i in model.graph.initializer}  # the FP32 weight is gone
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_array_equal(after, before)


def test_inc_rtn_reaches_onnx_as_fp32_weights(tiny_classifier_dir: Path, classifier_artifact: Path,
                                              tmp_path: Path) -> None:
    from edgellm.models import load_encoder
    from edgellm.quantize.inc import inc_quantize_onnx

    model = load_encoder(tiny_classifier_dir, task="text-classification")
    r = inc_quantize_onnx(model, tmp_path / "rtn.onnx", method="rtn", tokenizer=classifier_artifact / "tokenizer.json",
                          texts=sentences(10), samples=4, max_length=64)
    assert "QuantizeLinear" not in r.ops and "MatMulInteger" not in r.ops  # INC's int8 never reaches the file
    assert r.settings["mode"] == "weight-only" and "de-quantized FP32 weights" in r.settings["export"]
    assert abs(r.path.stat().st_size / (classifier_artifact / "model.onnx").stat().st_size - 1) < 0.1
    feeds = feeds_for(classifier_artifact, 4)
    np.testing.assert_allclose(run_onnx(r.path, feeds), run_onnx(classifier_artifact / "model.onnx", feeds), atol=0.01)


@pytest.mark.slow
def test_inc_pt2e_static_exports_a_qdq_graph(tiny_classifier_dir: Path, classifier_artifact: Path,
                                             tmp_path: Path) -> None:
    from edgellm.models import load_encoder
    from edgellm.quantize.inc import inc_quantize_onnx

    model = load_encoder(tiny_classifier_dir, task="text-classification")
    r = inc_quantize_onnx(model, tmp_path / "pt2e.onnx", method="pt2e-static",
                          tokenizer=classifier_artifact / "tokenizer.json", texts=sentences(10), samples=6,
                          max_length=64)
    assert r.settings["calibration"] == {"samples": 6}
    assert r.settings["int8_weights_folded"] == WEIGHT_MATMULS + GEMMS  # every Linear's weight stored as int8
    int8 = [i for i in onnx.load(str(r.path)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= WEIGHT_MATMULS + GEMMS and r.ops["DequantizeLinear"] > r.ops["QuantizeLinear"]
    feeds = feeds_for(classifier_artifact, 4)  # batch 1, their own lengths: the batch and sequence stayed dynamic
    np.testing.assert_allclose(run_onnx(r.path, feeds), run_onnx(classifier_artifact / "model.onnx", feeds), atol=0.05)


@pytest.mark.parametrize("bias, sum_output", [(True, False), (True, True), (False, True), (False, False)])
def test_split_skip_layer_norm_keeps_outputs(bias: bool, sum_output: bool) -> None:
    """SkipLayerNormalization (slow on ONNX Runtime's CPU) -> Add (+ bias Add) + LayerNormalization: same outputs,
    including the input + skip + bias sum when the graph uses it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgellm.quantize.ort import split_skip_layer_norm

    rng = np.random.default_rng(0)
    hidden = 16
    inits = [numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), n) for n in ("g", "b", "bias")]
    inputs = ["x", "s", "g", "b"] + (["bias"] if bias else [])
    outputs = ["y", "", "", "sum"] if sum_output else ["y"]
    node = helper.make_node("SkipLayerNormalization", inputs, outputs, domain="com.microsoft", epsilon=1e-5,
                            name="sln")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, hidden]) for n in ("x", "s")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, hidden]) for n in outputs if n]
    model = helper.make_model(helper.make_graph([node], "g", io, outs, inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    feeds = {"x": rng.normal(size=(2, 3, hidden)).astype(np.float32),
             "s": rng.normal(size=(2, 3, hidden)).astype(np.float32)}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert split_skip_layer_norm(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Add"] + (["Add"] if bias else []) + ["LayerNormalization"]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if sum_output:
        np.testing.assert_allclose(got[1], feeds["x"] + feeds["s"] + (numpy_helper.to_array(inits[2]) if bias else 0),
                                   atol=1e-6)
