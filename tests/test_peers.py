"""Text-generation peers (edgellm.bench.peers): a peer that is not installed or cannot open is a Missing row with
its reason, never skipped; typed errors for bad options; the llama.cpp wrapper against a tiny seeded GGUF written
here (greedy tokens and log-probabilities equal to the same model in PyTorch), in this process and in its own.
Nothing here builds llama.cpp or runs the onnxruntime-genai model builder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgellm.bench import peers
from edgellm.bench.peers import (
    LLAMA_CPP,
    OPENVINO_GENAI,
    ORTGENAI,
    LlamaCppPeer,
    Missing,
    OpenVINOGenAIPeer,
    OrtGenAIPeer,
    PeerSpec,
    measure_peers,
    open_peer,
    ortgenai_build,
    openvino_export,
    prepare_peers,
)
from edgellm.errors import BackendError, ConfigError, GenerationError, InputError, ModelError

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python not installed (make peers)")
PROMPT = [5, 17, 42, 99, 3, 250, 7, 31]


# ---------------------------------------------------------------------------------------------------------------
# missing peers are rows with their reason


@pytest.fixture()
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.Q4_1.gguf"
    path.write_bytes(b"GGUF-not-really")
    return path


def test_missing_module_is_a_missing_row_with_the_import_error(monkeypatch: pytest.MonkeyPatch,
                                                              fake_gguf: Path, tmp_path: Path) -> None:
    for engine in (LLAMA_CPP, ORTGENAI, OPENVINO_GENAI):
        monkeypatch.setitem(peers._MODULES, engine, f"edgellm_absent_{engine.replace('.', '_').replace('-', '_')}")
    items = prepare_peers(str(fake_gguf), work_dir=tmp_path / "work")
    assert [(m.name, m.format) for m in items] == [
        ("llama.cpp", "Q8_0"), ("llama.cpp", "Q4_0"), ("onnxruntime-genai", "int8"), ("onnxruntime-genai", "int4"),
        ("openvino-genai", "int8"), ("openvino-genai", "int4")]
    assert all(isinstance(m, Missing) for m in items)
    assert items[0].reason.startswith("llama.cpp: No module named 'edgellm_absent_llama_cpp'; install: make peers")
    assert items[2].reason.startswith("onnxruntime-genai: No module named 'edgellm_absent_onnxruntime_genai'")
    assert items[5].reason.startswith("openvino-genai: No module named 'edgellm_absent_openvino_genai'")
    assert not (tmp_path / "work").exists()  # nothing was built for a missing engine
    rows = measure_peers(items, threads=1, prompt_ids=PROMPT, max_new_tokens=4)
    assert len(rows) == 6
    assert rows[0] == {"name": "llama.cpp", "format": "Q8_0", "missing": True, "reason": items[0].reason}
    assert all(r["missing"] for r in rows)


def test_llama_cpp_needs_a_gguf_teacher(tiny_llama_dir: Path, tmp_path: Path) -> None:
    items = prepare_peers(str(tiny_llama_dir), work_dir=tmp_path, engines=[LLAMA_CPP], llama_formats=["Q8_0"])
    if not HAS_LLAMA_CPP:
        assert items[0].reason.startswith("llama.cpp: No module named 'llama_cpp'")
        return
    assert items == [Missing("llama.cpp", "Q8_0", f"the teacher {tiny_llama_dir} is not a GGUF file; llama.cpp "
                                                  "peers are re-quantized from the teacher's GGUF")]


def test_peer_that_fails_to_open_in_its_process_is_missing_with_the_typed_reason(tmp_path: Path) -> None:
    """The child process raises ModelError; the row carries its message (and the next peer is still measured)."""
    bad = PeerSpec(LLAMA_CPP, str(tmp_path / "absent.gguf"), "Q8_0")
    rows = measure_peers([bad, Missing("openvino-genai", "int4", "build failed: x")], threads=1, prompt_ids=PROMPT,
                         max_new_tokens=4)
    assert rows[0]["missing"] is True
    assert rows[0]["reason"] == (f"llama.cpp Q8_0, opening llama.cpp Q8_0: '{tmp_path / 'absent.gguf'}' "
                                 "is not a .gguf file")
    assert rows[1] == {"name": "openvino-genai", "format": "int4", "missing": True, "reason": "build failed: x"}
    with pytest.raises(ModelError, match="absent.gguf' is not a .gguf file"):
        open_peer(bad, threads=1)


def test_available_peers_turns_open_failures_into_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = PeerSpec(OPENVINO_GENAI, str(tmp_path), "int8")
    monkeypatch.setattr(peers, "prepare_peers", lambda teacher, **kw: [spec, Missing("llama.cpp", "Q8_0", "r")])
    items = peers.available_peers("x", threads=1, isolate=False)
    assert items == [Missing("openvino-genai", "int8",
                             f"'{tmp_path}' is not an OpenVINO model folder (no openvino_model.xml)"),
                     Missing("llama.cpp", "Q8_0", "r")]


# ---------------------------------------------------------------------------------------------------------------
# typed errors


@pytest.mark.parametrize("call, error, message", [
    # an engine edgellm does not know
    (lambda p: open_peer(PeerSpec("vllm", str(p), "int8"), threads=1), ConfigError, "unknown peer engine 'vllm'"),
    # zero threads
    (lambda p: open_peer(PeerSpec(LLAMA_CPP, str(p), "Q8_0"), threads=0), ConfigError,
     "threads must be an integer >= 1, not 0"),
    # a folder given where a GGUF file is expected
    (lambda p: LlamaCppPeer(p, threads=1), ModelError, "is not a .gguf file"),
    # a folder without genai_config.json
    (lambda p: OrtGenAIPeer(p, threads=1), ModelError, "is not an onnxruntime-genai model folder"),
    # a folder without openvino_model.xml
    (lambda p: OpenVINOGenAIPeer(p, threads=1), ModelError, "is not an OpenVINO model folder"),
    # a precision the model builder has no CPU path for
    (lambda p: ortgenai_build(p, p / "o", precision="fp16", threads=1), ConfigError,
     "precision must be fp32, int8 or int4, not 'fp16'"),
    # a weight format optimum-intel does not take
    (lambda p: openvino_export(p, p / "o", weight_format="q8"), ConfigError,
     "weight_format must be fp32, fp16, int8 or int4, not 'q8'"),
    # a builder input that is not a Hugging Face folder
    (lambda p: ortgenai_build(p, p / "o", precision="int8", threads=1, python="/bin/false"), ModelError,
     "is not a Hugging Face model folder (no config.json)"),
    # an engine name misspelt
    (lambda p: prepare_peers(str(p), engines=["llamacpp"]), ConfigError, "unknown peer engines ['llamacpp']"),
])
def test_typed_errors(tmp_path: Path, call: Any, error: type, message: str) -> None:
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert message in str(caught.value)


def test_a_failed_build_reports_the_last_lines_of_its_output(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A builder that exits non-zero: BackendError with its exit status and last output lines; no folder left."""
    script = tmp_path / "fake_python"
    script.write_text("#!/bin/sh\necho 'loading model'\necho 'KeyError: rope_scaling' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(BackendError) as caught:
        ortgenai_build(tiny_llama_dir, tmp_path / "out", precision="int4", threads=2, python=script)
    assert str(caught.value) == ("onnxruntime-genai model builder (int4) failed (exit status 3):\n"
                                 "loading model\nKeyError: rope_scaling")
    assert not (tmp_path / "out").exists()


def test_greedy_masks_end_of_sequence_and_target_logp_is_log_softmax() -> None:
    assert peers._greedy(np.array([0.0, 5.0, 3.0], np.float32), [1]) == 2
    assert peers._greedy(np.array([0.0, 5.0, 3.0], np.float32), [2]) == 1
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, np.log(2.0)]])
    got = peers.token_log_probs(logits, [2, 2])  # the runtime's scorer, used by every peer
    np.testing.assert_allclose(got, [3.0 - np.log(np.exp([1.0, 2.0, 3.0]).sum()), np.log(2.0 / 4.0)], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp against a tiny seeded GGUF


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face q/k rows -> llama.cpp's rotary layout (convert_hf_to_gguf's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(folder: Path, out: Path) -> Path:
    """The tiny Llama of conftest as an F32 GGUF (tied embeddings: no output.weight), its BPE vocabulary included."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    hidden = config["hidden_size"]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])
    writer.add_file_type(0)  # ALL_F32
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["id"] for t in tok["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if i in special else 1 for _, i in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", weights[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(weights[p + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(weights[p + "self_attn.k_proj.weight"], kv_heads))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", weights[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf", reason="gguf-py not installed (pip install -e '.[full]')")
    return write_tiny_gguf(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny.F32.gguf")


@pytest.fixture(scope="module")
def torch_reference(tiny_llama_dir: Path) -> dict[str, Any]:
    """Greedy tokens (8 after PROMPT) and next-token log-probabilities of the same model in PyTorch FP32."""
    from edgellm.bench import TorchGenerator

    gen = TorchGenerator(tiny_llama_dir, threads=1)
    try:
        tokens = list(gen.stream(PROMPT, 8))
        logp = gen.score(PROMPT + tokens)
    finally:
        gen.close()
    return {"tokens": tokens, "logp": logp}


@needs_llama_cpp
def test_llama_cpp_matches_pytorch_on_a_tiny_gguf(tiny_gguf: Path, torch_reference: dict[str, Any]) -> None:
    peer = LlamaCppPeer(tiny_gguf, threads=1, n_ctx=64)
    try:
        assert (peer.name, peer.format, peer.size_bytes) == ("llama.cpp", "F32", tiny_gguf.stat().st_size)
        assert peer.vocab_size == 320
        tokens = list(peer.stream(PROMPT, 8))
        assert tokens == torch_reference["tokens"]
        assert list(peer.stream(PROMPT, 8)) == tokens  # no state carried between runs
        logp = peer.score(PROMPT + tokens)
        assert logp.shape == (15,)
        # llama.cpp keeps its KV cache in F16: differences of about 1e-3 past the first positions
        np.testing.assert_allclose(logp, torch_reference["logp"], atol=5e-3, rtol=0)
        with pytest.raises(InputError, match=r"prompt_ids has token ids outside the vocabulary \[0, 320\): \[320\]"):
            list(peer.stream([1, 320], 2))
        with pytest.raises(InputError, match="max_new_tokens must be an integer >= 1, not 0"):
            peer.stream(PROMPT, 0)
        with pytest.raises(InputError, match="score needs at least 2 token ids"):
            peer.score([4])
        assert peer.n_ctx == 256  # 64 asked, rounded up by llama.cpp
        with pytest.raises(GenerationError, match="8 prompt \\+ 249 new tokens exceed the context of 256"):
            peer.stream(PROMPT, 249)
    finally:
        peer.close()


@needs_llama_cpp
def test_llama_cpp_requantize_and_measure_in_its_own_process(tiny_gguf: Path, torch_reference: dict[str, Any],
                                                             tmp_path: Path) -> None:
    q8 = peers.llama_cpp_quantize(tiny_gguf, tmp_path / "tiny.Q8_0.gguf", "Q8_0", threads=1)
    assert 0 < q8.stat().st_size < tiny_gguf.stat().st_size / 2
    with pytest.raises(ConfigError, match="unknown llama.cpp file type 'Q9_9'"):
        peers.llama_cpp_quantize(tiny_gguf, tmp_path / "x.gguf", "Q9_9")
    heldout = [PROMPT + torch_reference["tokens"]]
    rows = measure_peers([PeerSpec(LLAMA_CPP, str(tiny_gguf), "F32"), PeerSpec(LLAMA_CPP, str(q8), "Q8_0")],
                         threads=1, prompt_ids=PROMPT, max_new_tokens=8, heldout=heldout, warmup=0, repeat=2)
    f32, int8 = rows
    assert (f32["name"], f32["format"], f32["missing"]) == ("llama.cpp", "F32", False)
    assert f32["tokens"] == torch_reference["tokens"]
    assert f32["generation"]["new_tokens"] == 8 and f32["generation"]["prompt_tokens"] == 8
    assert f32["decode_tokens_per_s"] > 0 and f32["time_to_first_token_ms"] > 0
    expected = float(np.exp(-np.mean(torch_reference["logp"])))
    assert f32["perplexity"] == pytest.approx(expected, rel=1e-3)  # F16 KV cache
    assert f32["peak_rss_bytes"] > 10_000_000  # a Python process with numpy and llama.cpp loaded
    assert f32["info"]["process"] == "own" and f32["info"]["threads"] == 1
    assert (int8["format"], int8["size_bytes"]) == ("Q8_0", q8.stat().st_size)
    assert int8["perplexity"] == pytest.approx(expected, rel=0.05)


# ---------------------------------------------------------------------------------------------------------------
# openvino-genai on the tiny model (optimum-cli export, about 15 s)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("openvino_genai") is None,
                    reason="openvino-genai not installed (make peers)")
def test_openvino_genai_on_the_tiny_model(tiny_llama_dir: Path, torch_reference: dict[str, Any],
                                          tmp_path: Path) -> None:
    folder = openvino_export(tiny_llama_dir, tmp_path / "ov", weight_format="fp32")
    assert json.loads((folder / "edgellm-peer.json").read_text())["command"] == [
        "optimum-cli", "export", "openvino", "-m", str(tiny_llama_dir.resolve()), "--task",
        "text-generation-with-past", "--weight-format", "fp32", str(folder)]
    peer = OpenVINOGenAIPeer(folder, threads=1)
    try:
        assert (peer.name, peer.format, peer.vocab_size) == ("openvino-genai", "fp32", 320)
        assert peer.size_bytes == sum((folder / f).stat().st_size for f in ("openvino_model.xml", "openvino_model.bin"))
        tokens = list(peer.stream(PROMPT, 8))
        assert len(tokens) == 8 and list(peer.stream(PROMPT, 8)) == tokens
        assert set(peer.info["engine_reported"]) == {"ttft_ms", "tpot_ms"}
        logp = peer.score(PROMPT + torch_reference["tokens"])
        # OpenVINO infers in bf16 by default on CPUs with AVX512_BF16 (and the pipeline keeps that default)
        tolerance = 0.15 if peer.info["inference_precision"] == "bf16" else 1e-3
        np.testing.assert_allclose(logp, torch_reference["logp"], atol=tolerance, rtol=0)
        with pytest.raises(InputError, match=r"outside the vocabulary \[0, 320\)"):
            peer.stream([-1], 2)
    finally:
        peer.close()
