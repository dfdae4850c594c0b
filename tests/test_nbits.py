"""Block-quantized 4 / 8-bit weights (edgellm.quantize.nbits): the packed layout ONNX Runtime's MatMulNBits reads,
round-to-nearest and GPTQ error, the 8-bit fallback, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgellm.errors import ConfigError


def _matmul_model(weight: np.ndarray, *, name: str = "proj") -> object:
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    node = helper.make_node("MatMul", ["x", f"{name}.weight"], ["y"], name=name)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
                              [numpy_helper.from_array(weight, f"{name}.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "bits, block, symmetric, k",
    [
        (4, 32, False, 64),  # the default layout: two blocks per row, zero points two per byte
        (4, 16, False, 48),  # three blocks: an odd count pads the packed zero points of each row
        (4, 32, True, 64),  # symmetric: no zero-point input (ONNX Runtime's default 8)
        (8, 32, False, 64),  # 8 bits: one byte per weight and per zero point
        (8, 16, True, 32),  # 8 bits symmetric: default zero point 128
        (4, 32, False, 48),  # K not a multiple of the block: the last block of each column padded (MatMulNBits' layout)
        (8, 64, True, 40),  # a block longer than K: one padded block per column
    ],
)
def test_packed_weights_run_in_onnx_runtime_as_dequantized(tmp_path: Path, bits: int, block: int, symmetric: bool,
                                                           k: int) -> None:
    """At accuracy_level 0 (float compute) MatMulNBits equals x @ dequantized weights: the packing is right."""
    import onnx

    from edgellm.quantize.nbits import quantize_blocks, quantize_nbits

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, 24)).astype(np.float32)
    onnx.save_model(_matmul_model(weight), str(tmp_path / "f.onnx"))
    result = quantize_nbits(tmp_path / "f.onnx", tmp_path / "q.onnx", bits=bits, block_size=block,
                            symmetric=symmetric, accuracy_level=0)
    assert result.ops == {"MatMulNBits": 1, f"MatMulNBits_{bits}bit": 1}
    pad = -k % block
    q, scale, zero = quantize_blocks(np.pad(weight, ((0, pad), (0, 0))), bits=bits, block_size=block,
                                     symmetric=symmetric)
    dequant = ((q.astype(np.float32) - zero[..., None]) * scale[..., None]).reshape(24, k + pad)[:, :k].T
    x = rng.standard_normal((3, k)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "q.onnx", x), x @ dequant, atol=2e-4, rtol=0)
    # and the rounding is within half a step of the original weights (clipping search may trade a few)
    step = np.repeat(scale, block, axis=1).T[:k]  # (K, N)
    assert np.mean(np.abs(dequant - weight) <= step / 2 + 1e-6) > 0.95
    inputs = list(onnx.load(str(tmp_path / "q.onnx")).graph.node[0].input)
    assert len(inputs) == (3 if symmetric else 4)


def test_int8_compute_level_stays_close(tmp_path: Path) -> None:
    """accuracy_level 4 (int8 activations per block, the fast CPU path): within 1% of the float result."""
    import onnx

    from edgellm.quantize.nbits import quantize_nbits

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((128, 64)).astype(np.float32)
    onnx.save_model(_matmul_model(weight), str(tmp_path / "f.onnx"))
    quantize_nbits(tmp_path / "f.onnx", tmp_path / "q8.onnx", bits=8)
    x = rng.standard_normal((2, 128)).astype(np.float32)
    ref = x @ weight
    err = np.abs(_run(tmp_path / "q8.onnx", x) - ref).max() / np.abs(ref).max()
    assert err < 0.01


def test_gptq_beats_round_to_nearest_on_correlated_inputs() -> None:
    """GPTQ spreads each column's rounding error over the columns not yet quantized, weighted by the inputs'
    Hessian: on correlated inputs its output error is clearly below round-to-nearest's."""
    from edgellm.quantize.nbits import gptq_blocks, quantize_blocks

    rng = np.random.default_rng(2)
    k, n = 64, 48
    mix = rng.standard_normal((k, k)) * 0.5 + np.eye(k)
    x = rng.standard_normal((2048, k)) @ mix  # (samples, K), correlated features
    weight = rng.standard_normal((k, n)).astype(np.float32)
    hessian = x.T @ x

    def out_err(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> float:
        dequant = ((q.astype(np.float64) - zero[..., None]) * scale[..., None]).reshape(n, k).T
        return float(np.linalg.norm(x @ (weight - dequant)) / np.linalg.norm(x @ weight))

    rtn = out_err(*quantize_blocks(weight, bits=4, block_size=32))
    gptq = out_err(*gptq_blocks(weight, hessian, bits=4, block_size=32))
    plain_order = out_err(*gptq_blocks(weight, hessian, bits=4, block_size=32, act_order=False))
    assert gptq < 0.8 * rtn and plain_order < rtn


def test_fallback_gives_the_worst_weights_8_bits(tmp_path: Path) -> None:
    """fallback_fraction 0.5 over two equal-size weights: the one with the larger 4-bit error gets 8 bits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgellm.quantize.nbits import quantize_nbits

    rng = np.random.default_rng(3)
    on_grid = (rng.integers(-7, 9, size=(32, 16)) * 0.125).astype(np.float32)  # 16 levels, step 1/8
    on_grid[0::16, :], on_grid[1::16, :] = -0.875, 1.0  # every block spans the whole grid: exact at 4 bits
    spiky = rng.standard_normal((32, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "a.weight"], ["ya"], name="a"),
             helper.make_node("MatMul", ["x", "b.weight"], ["yb"], name="b")]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, ["M", 32])],
                              [value("ya", TensorProto.FLOAT, ["M", 16]), value("yb", TensorProto.FLOAT, ["M", 16])],
                              [numpy_helper.from_array(on_grid, "a.weight"), numpy_helper.from_array(spiky, "b.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "f.onnx"))
    result = quantize_nbits(tmp_path / "f.onnx", tmp_path / "q.onnx", bits=4, block_size=16, fallback_fraction=0.5)
    errors = result.settings["relative_error"]  # after the fallback: b's is its 8-bit error
    assert result.settings["fallback_8bit"] == ["b"]
    assert (result.ops["MatMulNBits_4bit"], result.ops["MatMulNBits_8bit"]) == (1, 1)
    assert errors["a"] < 1e-10 and errors["b"] < 1e-4
    none = quantize_nbits(tmp_path / "f.onnx", tmp_path / "q0.onnx", bits=4, block_size=16)
    assert none.settings["fallback_8bit"] == [] and none.settings["relative_error"]["b"] > 1e-3


def test_block_size_8bit_by_name_sets_the_blocks_of_matching_nodes(tmp_path: Path) -> None:
    """8-bit weights of nodes whose name ends with a key get its block size; the others keep block_size_8bit; the
    4-bit weights keep block_size; the model still computes x @ W (to 8-bit precision)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgellm.quantize.nbits import quantize_nbits

    rng = np.random.default_rng(5)
    names = ["layers.0.mlp.down_proj", "layers.0.mlp.gate_up", "lm_head"]
    weights = {n: rng.standard_normal((128, 16)).astype(np.float32) for n in names}
    nodes = [helper.make_node("MatMul", ["x", f"{n}.weight"], [f"y{i}"], name=n) for i, n in enumerate(names)]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, ["M", 128])],
                              [value(f"y{i}", TensorProto.FLOAT, ["M", 16]) for i in range(3)],
                              [numpy_helper.from_array(w, f"{n}.weight") for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "f.onnx"))

    def blocks(path: Path) -> dict[str, tuple[int, int]]:
        return {n.name: ({a.name: a.i for a in n.attribute}["bits"], {a.name: a.i for a in n.attribute}["block_size"])
                for n in onnx.load(str(path)).graph.node}

    eight = quantize_nbits(tmp_path / "f.onnx", tmp_path / "q8.onnx", bits=8, block_size_8bit=64,
                           block_size_8bit_by_name={"down_proj": 32}, symmetric=True)
    assert blocks(tmp_path / "q8.onnx") == {"layers.0.mlp.down_proj": (8, 32), "layers.0.mlp.gate_up": (8, 64),
                                            "lm_head": (8, 64)}
    assert eight.settings["block_size_8bit_by_name"] == {"down_proj": 32}
    x = rng.standard_normal((3, 128)).astype(np.float32)
    import onnxruntime as ort

    got = ort.InferenceSession(str(tmp_path / "q8.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for y, n in zip(got, names):
        assert np.abs(y - x @ weights[n]).max() < 0.05 * np.abs(x @ weights[n]).max()
    quantize_nbits(tmp_path / "f.onnx", tmp_path / "q4.onnx", bits=4, block_size=16, block_size_8bit=64,
                   block_size_8bit_by_name={"down_proj": 32, "lm_head": 128})  # lm_head_bits 8: its own block
    assert blocks(tmp_path / "q4.onnx") == {"layers.0.mlp.down_proj": (4, 16), "layers.0.mlp.gate_up": (4, 16),
                                            "lm_head": (8, 128)}


def test_lm_head_rows_keep_the_first_token_ids_at_lm_head_bits(tmp_path: Path) -> None:
    """lm_head_rows 24 of 64: the lm_head becomes an 8-bit MatMulNBits for ids 0-23 and a 4-bit one for 24-63 whose
    outputs are concatenated in id order (the model still computes x @ W); 0 rows puts the whole head at 4 bits,
    as many rows as the vocabulary keeps it whole at 8; the 8-bit format never splits it."""
    import onnx
    import onnxruntime as ort

    from edgellm.quantize.nbits import quantize_nbits

    rng = np.random.default_rng(11)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    onnx.save_model(_matmul_model(weight, name="lm_head"), str(tmp_path / "f.onnx"))
    x = rng.standard_normal((5, 64)).astype(np.float32)

    def build(name: str, **kwargs: object) -> tuple[dict[str, tuple[int, int]], np.ndarray, dict]:
        result = quantize_nbits(tmp_path / "f.onnx", tmp_path / name, block_size=16, block_size_8bit=32,
                                accuracy_level=0, **kwargs)
        graph = onnx.load(str(tmp_path / name)).graph
        attributes = {n.name: {a.name: a.i for a in n.attribute} for n in graph.node}
        shapes = {name: (a.get("bits", 0), a.get("N", 0)) for name, a in attributes.items()}
        got = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        return shapes, got, result.settings

    shapes, split, settings = build("split.onnx", bits=4, lm_head_bits=8, lm_head_rows=24)
    assert shapes == {"lm_head": (8, 24), "lm_head/rest": (4, 40), "lm_head/concat": (0, 0)}
    assert settings["lm_head_rows"] == 24 and set(settings["relative_error"]) == {"lm_head", "lm_head/rest"}
    exact = x @ weight
    err = np.abs(split - exact)
    assert err.shape == (5, 64) and err.max() < 0.25 * np.abs(exact).max()
    assert err[:, :24].mean() < 0.1 * err[:, 24:].mean()  # 8 bits where asked, 4 bits after
    _, whole8, _ = build("whole8.onnx", bits=4, lm_head_bits=8)
    _, over, settings = build("over.onnx", bits=4, lm_head_bits=8, lm_head_rows=64)
    np.testing.assert_array_equal(over, whole8)
    assert settings["lm_head_rows"] is None
    np.testing.assert_allclose(split[:, :24], whole8[:, :24], atol=1e-5)  # the same 8-bit rows (blocks along K)
    shapes, zero, _ = build("zero.onnx", bits=4, lm_head_bits=8, lm_head_rows=0)
    shapes4, whole4, _ = build("whole4.onnx", bits=4, lm_head_bits=4)
    assert shapes == shapes4 == {"lm_head": (4, 64)}
    np.testing.assert_array_equal(zero, whole4)
    np.testing.assert_allclose(split[:, 24:], whole4[:, 24:], atol=1e-5)
    shapes, _, _ = build("eight.onnx", bits=8, lm_head_bits=8, lm_head_rows=24)
    assert shapes == {"lm_head": (8, 64)}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"bits": 3}, "ConfigError", "bits must be 4 or 8, not 3"),
        ({"block_size": 24}, "ConfigError", "block_size must be a power of two >= 16, not 24"),
        ({"block_size_8bit": 48}, "ConfigError", "block_size_8bit must be a power of two >= 16, not 48"),
        ({"block_size_8bit_by_name": {"down_proj": 48}}, "ConfigError",
         "block_size_8bit_by_name maps a node-name suffix to a power of two >= 16, not 'down_proj': 48"),
        ({"method": "awq"}, "ConfigError", r"unknown weight quantization method 'awq'; choose from \['rtn', 'gptq'\]"),
        ({"method": "gptq"}, "ConfigError", "method 'gptq' needs calibration token sequences"),
        ({"fallback_fraction": 1.0}, "ConfigError", r"fallback_fraction must be in \[0, 1\), not 1.0"),
        ({"lm_head_bits": 2}, "ConfigError", "lm_head_bits must be 4, 8 or null"),
        ({"lm_head_rows": -1}, "ConfigError", r"lm_head_rows must be an int >= 0 or null \(every row\), not -1"),
        ({"lm_head_rows": 1.5}, "ConfigError", "lm_head_rows must be an int >= 0 or null"),
        ({"embedding": "int4"}, "ConfigError", r"embedding must be one of \['fp32', 'fp16'\]"),
        ({"exclude": ["proj"]}, "QuantizationError", "has no MatMul with a float weight to quantize"),
    ],
)
def test_bad_options_are_typed_errors(tmp_path: Path, kwargs: dict, error: str, message: str) -> None:
    import onnx

    import edgellm.errors as errors
    from edgellm.quantize.nbits import quantize_nbits

    onnx.save_model(_matmul_model(np.ones((64, 8), np.float32)), str(tmp_path / "f.onnx"))
    with pytest.raises(getattr(errors, error), match=message):
        quantize_nbits(tmp_path / "f.onnx", tmp_path / "q.onnx", **kwargs)
    assert not (tmp_path / "q.onnx").exists()


def test_unreadable_model_is_a_typed_error(tmp_path: Path) -> None:
    from edgellm.errors import QuantizationError
    from edgellm.quantize.nbits import quantize_nbits

    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(QuantizationError, match="cannot read"):
        quantize_nbits(tmp_path / "bad.onnx", tmp_path / "q.onnx")


class _WordTokenizer:
    """One id per word (the source's number * 1000 + the word's position), enough for calibration packing."""

    def __call__(self, text: str) -> object:
        class Encoded:
            input_ids = [int(w) for w in text.split()]
        return Encoded()


def test_calibration_sequences_span_every_source_of_a_corpus_list() -> None:
    from edgellm.quantize.decoder import calibration_sequences

    # three sources one after the other, as a recipe's corpus list arrives: 3 x 400 texts of 5 words each
    texts = [" ".join(str(s * 1000 + i % 997) for _ in range(5)) for s in (1, 2, 3) for i in range(400)]
    sequences = calibration_sequences(_WordTokenizer(), texts, count=6, length=40)
    assert len(sequences) == 6 and all(len(s) == 40 for s in sequences)
    sources = {token // 1000 for s in sequences for token in s}
    assert sources == {1, 2, 3}  # not only the first source: 6 x 40 tokens would fit in its first 48 texts
    assert calibration_sequences(_WordTokenizer(), texts, count=6, length=40) == sequences  # deterministic
    short = calibration_sequences(_WordTokenizer(), texts[:3], count=6, length=40)
    assert [len(s) for s in short] == [15]  # the texts ran out: one shorter sequence


def _three_matmuls(tmp_path: Path) -> Path:
    """x -> attn.o_proj -> mlp.down_proj -> lm_head: three float MatMuls of 128 inputs (seeded)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "o.weight"], ["a"], name="attn.o_proj"),
             helper.make_node("MatMul", ["a", "down.weight"], ["h"], name="mlp.down_proj"),
             helper.make_node("MatMul", ["h", "head.weight"], ["y"], name="lm_head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 96])],
                              [numpy_helper.from_array(rng.normal(size=(128, 128)).astype(np.float32), "o.weight"),
                               numpy_helper.from_array(rng.standard_t(2, size=(128, 128)).astype(np.float32),
                                                       "down.weight"),
                               numpy_helper.from_array(rng.normal(size=(128, 96)).astype(np.float32), "head.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "src.onnx"
    src.write_bytes(model.SerializeToString())
    return src


def test_eight_bit_settings_name_what_the_8bit_model_is_made_with(tmp_path: Path) -> None:
    """WeightFormats.eight_bit_settings (the teacher stage's cache key): formats that agree on it write the same 8-bit
    model, whatever their 4-bit settings; each setting it names changes the model."""
    from edgellm.quantize.decoder import WeightFormats, quantize_decoder_nbits

    src = _three_matmuls(tmp_path)

    def made(name: str, **settings: object) -> tuple[dict[str, object], bytes]:
        weights = WeightFormats(**settings)  # type: ignore[arg-type]
        quantize_decoder_nbits(src, tmp_path / f"{name}.onnx", bits=8, weights=weights)
        return weights.eight_bit_settings(), (tmp_path / f"{name}.onnx").read_bytes()

    base = made("base")
    assert made("other-4bit", block_size=64, int4_method="rtn", int4_fallback=0.25, lm_head_rows=32) == base
    head4 = made("head4", lm_head_bits=4, lm_head_rows=32)
    variants = [made("blocks", block_size_8bit=32), made("by-name", block_size_8bit_by_name={"lm_head": 16}), head4,
                made("head4-rows", lm_head_bits=4, lm_head_rows=64),
                made("head4-block", lm_head_bits=4, lm_head_rows=32, block_size=64)]
    for i, (settings, data) in enumerate(variants):
        for other_settings, other_data in [base, *variants[:i]]:
            assert settings != other_settings and data != other_data


def test_one_rounding_writes_each_fallback_share_as_a_fresh_quantization_would(tmp_path: Path) -> None:
    """NBitsQuantizer: the weights rounded once, then shares written in any order, give the bytes and settings of
    quantize_nbits run afresh for each share."""
    from edgellm.quantize.nbits import NBitsQuantizer, quantize_nbits

    src = _three_matmuls(tmp_path)
    quantizer = NBitsQuantizer(src, bits=4, block_size=16, lm_head_bits=8, lm_head_rows=32)
    for share in (0.5, 0.0, 0.5):
        written = quantizer.write(tmp_path / "shared.onnx", share)
        fresh = quantize_nbits(src, tmp_path / "fresh.onnx", bits=4, block_size=16, lm_head_bits=8, lm_head_rows=32,
                               fallback_fraction=share)
        assert (tmp_path / "shared.onnx").read_bytes() == (tmp_path / "fresh.onnx").read_bytes()
        assert written.settings == fresh.settings and written.ops == fresh.ops
    assert written.settings["fallback_8bit"] == ["mlp.down_proj"]  # heavy-tailed weights: the largest 4-bit error
    with pytest.raises(ConfigError, match=r"fallback_fraction must be in \[0, 1\), not 1.0"):
        quantizer.write(tmp_path / "bad.onnx", 1.0)
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("passes_from,chosen,within", [(0, 0, True), (2, 2, True), (None, 3, False)])
def test_auto_fallback_keeps_the_first_step_its_judge_passes(tmp_path: Path, passes_from: int | None, chosen: int,
                                                              within: bool) -> None:
    """int4_fallback: auto writes each step of INT4_FALLBACK_LADDER (its names added to int4_keep_8bit) until the
    judge names no miss (all miss: the last stays); the model left at dst is that step's, every trial recorded."""
    from edgellm.quantize.decoder import WeightFormats, fallback_step, quantize_decoder_nbits
    from edgellm.quantize.nbits import quantize_nbits
    from edgellm.recipe import INT4_FALLBACK_LADDER

    src = _three_matmuls(tmp_path)
    weights = WeightFormats(block_size=16, int4_method="rtn", int4_fallback="auto", int4_keep_8bit=("o_proj",),
                            lm_head_rows=32)
    judged: list[bytes] = []

    def judge() -> dict:
        judged.append((tmp_path / "q4.onnx").read_bytes())
        ok = passes_from is not None and len(judged) - 1 >= passes_from
        return {"perplexity_ratio": 1.0 if ok else 1.2, "misses": [] if ok else ["perplexity 1.2000x FP32's"]}

    info = quantize_decoder_nbits(src, tmp_path / "q4.onnx", bits=4, weights=weights, judge=judge)
    search = info["fallback_search"]
    names, share = INT4_FALLBACK_LADDER[chosen]
    keep = ("o_proj", *names)
    assert [t["step"] for t in search["trials"]] == [fallback_step(("o_proj", *n), f)
                                                    for n, f in INT4_FALLBACK_LADDER[: chosen + 1]]
    assert len(judged) == chosen + 1 and search["ladder"][0] == "none"
    assert (search["chosen"], search["within_budget"]) == (fallback_step(keep, share), within)
    assert (info["fallback_fraction"], info["keep_8bit"]) == (share, list(keep))
    # the graph's down projection and o_proj are 8-bit from the step that names down_proj on (o_proj from the recipe)
    assert info["fallback_8bit"] == (["attn.o_proj", "mlp.down_proj"] if chosen >= 2 else ["attn.o_proj"])
    assert all(t["size_bytes"] > 0 for t in search["trials"])
    assert [t["share_8bit"] for t in search["trials"]] == [0.5, 0.5, 1.0, 1.0][: chosen + 1]  # o_proj: half
    quantize_nbits(src, tmp_path / "direct.onnx", bits=4, block_size=16, block_size_8bit=weights.block_size_8bit,
                   block_size_8bit_by_name=weights.block_size_8bit_by_name, lm_head_rows=32, fallback_fraction=share,
                   keep_8bit=keep)
    assert (tmp_path / "q4.onnx").read_bytes() == judged[-1] == (tmp_path / "direct.onnx").read_bytes()
    with pytest.raises(ConfigError, match="int4_fallback: auto needs validation text"):
        quantize_decoder_nbits(src, tmp_path / "none.onnx", bits=4, weights=weights)


def test_keep_8bit_names_weights_by_suffix_besides_the_share(tmp_path: Path) -> None:
    """keep_8bit: the 4-bit weights whose node name ends with a suffix stay 8-bit, joined by the share's largest
    errors; a suffix matching nothing keeps nothing, and the 8-bit head is never counted."""
    from edgellm.quantize.nbits import NBitsQuantizer

    quantizer = NBitsQuantizer(_three_matmuls(tmp_path), bits=4, block_size=16, lm_head_bits=8)
    assert quantizer.fallback(0.0) == [] and quantizer.fallback(0.0, ("qkv", "lm_head")) == []
    assert quantizer.fallback(0.0, ("o_proj",)) == ["attn.o_proj"]
    assert quantizer.fallback(0.5) == ["mlp.down_proj"]
    assert quantizer.fallback(0.5, ("o_proj",)) == ["attn.o_proj", "mlp.down_proj"]
    written = quantizer.write(tmp_path / "q.onnx", 0.0, ("o_proj",))
    assert written.settings["keep_8bit"] == ["o_proj"] and written.ops["MatMulNBits_8bit"] == 2  # o_proj, lm_head


def test_int4_check_names_each_budget_it_misses() -> None:
    """Int4Check.judge: perplexity over FP32's beyond the tolerance, sentiment points under FP32's beyond the drop."""
    from edgellm.quantize.decoder import Int4Check

    check = Int4Check([[1, 2]], (["a review"], [1]), tolerance=0.05, sentiment_drop=3.0)
    fp32 = {"perplexity": 100.0, "sentiment": 80.0}
    assert check.judge({"perplexity": 105.0, "sentiment": 77.0}, fp32)["misses"] == []
    over = check.judge({"perplexity": 106.0, "sentiment": 76.5}, fp32)
    assert over["misses"] == ["perplexity 1.0600x FP32's", "sentiment 3.5 points under FP32's"]
    assert (over["perplexity_ratio"], over["sentiment_drop"]) == (1.06, 3.5)
    better = check.judge({"perplexity": 99.0, "sentiment": 90.0}, fp32)
    assert better["misses"] == [] and better["sentiment_drop"] == -10.0
    plain = Int4Check([[1, 2]], tolerance=0.05)  # no reviews: perplexity alone
    assert plain.judge({"perplexity": 104.0}, {"perplexity": 100.0}) == {"perplexity": 104.0,
                                                                         "perplexity_ratio": 1.04, "misses": []}
    assert "sentiment_drop" not in plain.budget() and plain.budget()["rows"]["sentiment_reviews"] == 0
