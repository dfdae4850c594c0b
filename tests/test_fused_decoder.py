"""The fused ONNX Runtime decoder (edgellm.exporting.fused_decoder) against the plain graph and torch, its shared KV
buffer, its 4 / 8-bit weight formats, and what it refuses."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from edgellm.data import SAMPLE_TEXTS

PROMPTS = [t for t in SAMPLE_TEXTS if t.strip()][:6]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build_tiny_qwen2(folder: Path, *, seed: int = 0) -> Path:
    """A seeded Qwen2-style causal LM: like the tiny Llama, plus biases on the q / k / v projections."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from tests.conftest import save_tiny_bpe_tokenizer

    tok = save_tiny_bpe_tokenizer(folder)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                         tie_word_embeddings=True, initializer_range=0.15, bos_token_id=1, eos_token_id=2,
                         use_sliding_window=False)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # non-zero biases, so that the test sees them
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.eval().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def decoders(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fused and plain FP32 artifacts of a tiny Llama and a tiny Qwen2 (ONNX only, no quantized models)."""
    from edgellm.quantize.decoder import WeightFormats, export_causal_lm

    root = tmp_path_factory.mktemp("fused")
    qwen = build_tiny_qwen2(root / "qwen2-src")
    out = {}
    for family, src in (("llama", tiny_llama_dir), ("qwen2", qwen)):
        for graph in ("fused", "plain"):
            out[f"{family}-{graph}"] = root / f"{family}-{graph}"
            export_causal_lm(src, out[f"{family}-{graph}"], formats=("onnx",), weights=WeightFormats(bits=()),
                             graph=graph, texts=PROMPTS[:2])
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fused_graph_equals_plain_graph(decoders: dict[str, Path], family: str) -> None:
    """Same logits (1e-4) at every position and the same greedy tokens, with the cache, on real text."""
    from edgellm.runtime import load

    fused = load(decoders[f"{family}-fused"], threads=1)
    plain = load(decoders[f"{family}-plain"], threads=1)
    assert fused.kv_layout.shared_buffer and not fused.kv_layout.position_ids
    assert not plain.kv_layout.shared_buffer and plain.kv_layout.position_ids
    for prompt in PROMPTS:
        ids = fused.encode(prompt)
        np.testing.assert_allclose(fused.logits(ids), plain.logits(ids), atol=1e-4, rtol=0)
        assert list(fused.tokens(prompt, 24, ignore_eos=True)) == list(plain.tokens(prompt, 24, ignore_eos=True))


def test_fused_export_is_checked_against_torch(decoders: dict[str, Path]) -> None:
    from edgellm.artifact import read_manifest

    for family in ("llama", "qwen2"):
        manifest = read_manifest(decoders[f"{family}-fused"])
        stats = manifest.model("onnx-fp32").metrics["vs_torch"]
        assert stats["max_abs_diff"] < 1e-4 and stats["greedy_agreement"] == 1.0
        assert manifest.model("onnx-fp32").kv_cache == {"graph": "fused", "shared_buffer": True}


def test_shared_buffer_equals_no_cache_up_to_the_context_end(tiny_llama_factory: Callable[..., Path],
                                                              tmp_path: Path) -> None:
    """A 32-token context: prompt + output fill it exactly; cached and uncached tokens agree to the last one, and
    a session asked to hold more than its buffer raises a typed error."""
    from edgellm.errors import GenerationError
    from edgellm.quantize.decoder import WeightFormats, export_causal_lm
    from edgellm.runtime import load

    export_causal_lm(tiny_llama_factory(), tmp_path / "lm", formats=("onnx",), weights=WeightFormats(bits=()),
                     context_length=32, texts=PROMPTS[:1])
    gen = load(tmp_path / "lm", threads=1)
    prompt = gen.encode(PROMPTS[0])[:20]
    cached = list(gen.tokens(prompt, 12, ignore_eos=True))
    assert len(cached) == 12 and cached == list(gen.tokens(prompt, 12, ignore_eos=True, use_cache=False))
    session = gen.backend.decode_session(gen.kv_layout, capacity=8)
    session.feed(prompt[:8])
    with pytest.raises(GenerationError, match="reached 9 tokens; this session's KV buffer holds 8"):
        session.feed([5])
    with pytest.raises(GenerationError, match="does not fit the model's context of 32"):
        gen.backend.decode_session(gen.kv_layout, capacity=33)


def test_decode_session_mixes_one_and_many_kept_positions(lm_artifact: Path) -> None:
    """A step keeping one position writes into the session's own logits buffer, a step keeping several gets ONNX
    Runtime's output; in any order each equals the uncached logits, and a returned row is not overwritten later."""
    from edgellm.runtime import load

    gen = load(lm_artifact, model="onnx-fp32", threads=1)
    ids = gen.encode(PROMPTS[1])[:12]
    full = gen.logits(ids)  # (12, V), no cache
    session = gen.backend.decode_session(gen.kv_layout, capacity=16)
    first = session.feed(ids[:5])  # keep 1
    rows = session.feed(ids[5:8], keep=3)
    one = session.feed(ids[8:9])
    last = session.feed(ids[9:12], keep=2)
    for got, want in ((first, full[4:5]), (rows, full[5:8]), (one, full[8:9]), (last, full[10:12])):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    again = gen.backend.decode_session(gen.kv_layout, capacity=16)
    kept = again.feed(ids[:5])
    snapshot = kept.copy()
    again.feed(ids[5:6])
    np.testing.assert_array_equal(kept, snapshot)


def test_one_generator_shared_by_8_threads(lm_artifact: Path) -> None:
    """Each thread gets the tokens a sequential run gets (every call has its own decode session and buffer)."""
    from edgellm.runtime import load

    gen = load(lm_artifact, model="onnx-int8", threads=1)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(8)]
    expected = [list(gen.tokens(p, 16, ignore_eos=True)) for p in prompts]
    got: list[Any] = [None] * 8
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        got[i] = list(gen.tokens(prompts[i], 16, ignore_eos=True))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def _resident_bytes() -> int:
    import os

    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory is read from /proc (Linux)")
def test_memory_stays_flat_over_1000_generations(lm_artifact: Path) -> None:
    """Each generation's decode session and KV buffer are freed: 1,000 more generations (single and batched) leave
    the process's resident memory where 100 warm-up ones left it (ONNX Runtime's arena is sized by then)."""
    from edgellm.runtime import load

    gen = load(lm_artifact, model="onnx-int8", threads=1)
    prompts = [gen.encode(p)[: 6 + i] for i, p in enumerate(PROMPTS)]

    def run(count: int) -> None:
        for i in range(count):
            if i % 10:
                list(gen.tokens(prompts[i % len(prompts)], 4, ignore_eos=True))
            else:
                list(gen.tokens_batch(prompts[:3], 4, ignore_eos=True))

    run(100)
    before = _resident_bytes()
    run(1000)
    growth = _resident_bytes() - before
    assert growth < 4_000_000, f"resident memory grew {growth / 1e6:.1f} MB over 1,000 generations"


def test_weight_formats_round_trip(lm_artifact: Path) -> None:
    """The 4 / 8-bit models hold MatMulNBits with the recorded bits, verify, load and generate torch-free."""
    import onnx

    from edgellm.artifact import verify_artifact
    from edgellm.runtime import load

    manifest = verify_artifact(lm_artifact)
    for name, bits in (("onnx-int8", 8), ("onnx-int4", 4)):
        entry = manifest.model(name)
        graph = onnx.load(str(lm_artifact / entry.path)).graph
        found = [dict((a.name, a.i) for a in n.attribute) for n in graph.node if n.op_type == "MatMulNBits"]
        assert len(found) == 17 and all(f["accuracy_level"] == 4 for f in found)
        by_node = {n.name: dict((a.name, a.i) for a in n.attribute) for n in graph.node if n.op_type == "MatMulNBits"}
        down = [f["block_size"] for n, f in by_node.items() if f["bits"] == 8 and n.endswith("down_proj")]
        assert down == ([32] * 4 if bits == 8 else down) and set(down) <= {32}  # block_size_8bit_by_name, 4 layers
        assert by_node["lm_head"]["block_size"] == 32  # block_size_8bit_by_name
        others = {f["block_size"] for n, f in by_node.items() if f["bits"] == 8 and not n.endswith(("down_proj",
                                                                                                   "lm_head"))}
        assert others == ({64} if bits == 8 else others) and others <= {64}  # CausalLMConfig.block_size_8bit
        assert {f["block_size"] for f in found if f["bits"] == 4} <= {32}  # CausalLMConfig.block_size
        eight = 17 if bits == 8 else 1 + len(entry.quantization["fallback_8bit"])  # lm_head_bits 8, the fallback
        assert sum(f["bits"] == 8 for f in found) == eight and sum(f["bits"] == bits for f in found) == \
            (17 if bits == 8 else 17 - eight)
        assert not [n for n in graph.node if n.op_type == "MatMul"]
        assert len(list(load(lm_artifact, model=name, threads=1).tokens(PROMPTS[0], 6, ignore_eos=True))) == 6


def test_split_lm_head_exports_and_generates(tiny_llama_factory: Callable[..., Path], tmp_path: Path) -> None:
    """lm_head_rows below the vocabulary: the 4-bit model's head is an 8-bit MatMulNBits for the first ids and a
    4-bit one for the rest, concatenated; the manifest records the split; the model verifies, generates the same
    tokens with and without the cache, and is closer to torch than the model with the whole head at 4 bits."""
    import onnx

    from edgellm.artifact import verify_artifact
    from edgellm.quantize.decoder import WeightFormats, export_causal_lm
    from edgellm.runtime import load

    src = tiny_llama_factory()
    export_causal_lm(src, tmp_path / "lm", formats=("onnx",), weights=WeightFormats(bits=(4,), lm_head_rows=100),
                     texts=PROMPTS[:2])
    entry = verify_artifact(tmp_path / "lm").model("onnx-int4")
    heads = {n.name: (n.op_type, {a.name: a.i for a in n.attribute})
             for n in onnx.load(str(tmp_path / "lm" / entry.path)).graph.node if n.name.startswith("lm_head")}
    vocab = heads["lm_head/rest"][1]["N"] + 100
    assert (heads["lm_head"][1]["bits"], heads["lm_head"][1]["N"]) == (8, 100)
    assert heads["lm_head/rest"][1]["bits"] == 4 and heads["lm_head/concat"][0] == "Concat"
    assert entry.quantization["lm_head_rows"] == 100 and vocab > 100
    export_causal_lm(src, tmp_path / "lm4", formats=("onnx",), weights=WeightFormats(bits=(4,), lm_head_rows=0),
                     texts=PROMPTS[:2])
    whole = verify_artifact(tmp_path / "lm4").model("onnx-int4")
    assert whole.quantization["lm_head_rows"] is None and "MatMulNBits_8bit" not in whole.quantization["ops"]
    assert entry.metrics["vs_torch"]["perplexity_ratio"] < whole.metrics["vs_torch"]["perplexity_ratio"]
    gen = load(tmp_path / "lm", model="onnx-int4", threads=1)
    prompt = gen.encode(PROMPTS[0])[:10]
    cached = list(gen.tokens(prompt, 8, ignore_eos=True))
    assert cached == list(gen.tokens(prompt, 8, ignore_eos=True, use_cache=False))
    assert gen.logits(prompt).shape == (10, vocab)


def test_fused_graph_refuses_what_it_cannot_write(tiny_llama_factory: Callable[..., Path], tmp_path: Path) -> None:
    """head_dim 12: GroupQueryAttention's rotary needs a multiple of 16. build refuses with the reason; the export
    falls back to the plain graph and records why."""
    from edgellm.artifact import read_manifest
    from edgellm.errors import ExportError
    from edgellm.quantize.decoder import WeightFormats, export_causal_lm
    from edgellm.exporting.fused_decoder import build_fused_decoder
    from edgellm.models import load_causal_lm

    src = tiny_llama_factory(hidden=48, heads=4, kv_heads=2, intermediate=96)
    with pytest.raises(ExportError, match="head_dim % 16 == 0; this model's head_dim is 12"):
        build_fused_decoder(load_causal_lm(src), context_length=64)
    export_causal_lm(src, tmp_path / "lm", formats=("onnx",), weights=WeightFormats(bits=(8,), block_size=16),
                     texts=PROMPTS[:1])
    entry = read_manifest(tmp_path / "lm").model("onnx-fp32")
    assert entry.kv_cache["graph"] == "plain" and "head_dim is 12" in entry.kv_cache["fused_unavailable"]


def test_a_block_longer_than_the_hidden_size_is_padded(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Blocks of 128 on a 64-wide model: one padded block per column; the model passes the export's checks
    against torch and records both block sizes."""
    import onnx

    from edgellm.artifact import read_manifest
    from edgellm.quantize.decoder import WeightFormats, export_causal_lm

    export_causal_lm(tiny_llama_dir, tmp_path / "lm", formats=("onnx",),
                     weights=WeightFormats(bits=(4,), block_size=128, block_size_8bit=128, block_size_8bit_by_name={},
                                           int4_method="rtn"),
                     texts=PROMPTS[:1])
    entry = read_manifest(tmp_path / "lm").model("onnx-int4")
    assert (entry.quantization["block_size"], entry.quantization["block_size_8bit"]) == (128, 128)
    graph = onnx.load(str(tmp_path / "lm" / entry.path)).graph
    blocks = {(a.name, a.i) for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute
              if a.name in ("block_size", "K") and (a.name == "block_size" or a.i == 64)}
    assert ("block_size", 128) in blocks and ("K", 64) in blocks and ("block_size", 32) not in blocks
