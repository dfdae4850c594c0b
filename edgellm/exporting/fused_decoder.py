"""Causal LM -> the fused ONNX Runtime decoder graph, written node by node from the model's weights.

The plain graph (`edgellm.exporting.decoder`) traces the model's own modules into standard ONNX ops, which every
engine reads (OpenVINO converts it). This one is for ONNX Runtime and uses its fused CPU / GPU kernels, the way
onnxruntime-genai's model builder lays out a decoder:

    input_ids (B, T) -> Gather(embedding) -> per layer:
        SimplifiedLayerNormalization | SkipSimplifiedLayerNormalization (residual add + RMSNorm in one kernel)
        MatMul qkv (one packed matrix) -> GroupQueryAttention (rotary inside, KV cache inside, causal mask from
        seqlens_k) -> MatMul o
        SkipSimplifiedLayerNormalization -> MatMul gate|up -> Split -> SiLU(gate) * up -> MatMul down
    final SkipSimplifiedLayerNormalization -> the last K positions -> MatMul lm_head -> logits (B, K, V)

    inputs   input_ids (B, T) int64, attention_mask (B, P+T) int64, num_logits_to_keep () int64,
             past_key_values.{i}.key / .value (B, KV, S, D) float32
    outputs  logits (B, K, V), present.{i}.key / .value (B, KV, max(S, P+T), D)

Positions come from the attention mask (seqlens_k = its row sums - 1), so there is no position_ids input. The KV
cache may be a buffer preallocated to the context (S = context_length) that the runtime binds as both past and
present: GroupQueryAttention then writes the new keys / values in place and nothing is copied per step
(`kv_cache.shared_buffer` in the manifest). With S = P (a growing cache) it works like the plain graph.

Every MatMul's weight is a named float initializer (`model.layers.{i}.attn.qkv.weight`, ...), transposed to
(K, N), which is what `edgellm.quantize.nbits` turns into MatMulNBits blocks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgellm.errors import ExportError

__all__ = ["FUSED_OPSET", "fused_decoder_supported", "build_fused_decoder", "write_fused_decoder"]

log = logging.getLogger(__name__)

FUSED_OPSET = 17
_MS = "com.microsoft"


def fused_decoder_supported(model: Any) -> str | None:
    """None when the fused graph can be written for `model`, else the reason it cannot (for a typed error or a
    fallback to the plain graph)."""
    from edgellm.exporting.decoder import EXPORTABLE_DECODERS

    cfg = model.config
    if cfg.model_type not in EXPORTABLE_DECODERS:
        return f"the fused decoder graph is written for {list(EXPORTABLE_DECODERS)}, not {cfg.model_type!r}"
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    if head_dim % 16:
        return f"GroupQueryAttention's fused rotary needs head_dim % 16 == 0; this model's head_dim is {head_dim}"
    if getattr(model.model.layers[0].self_attn, "q_norm", None) is not None:
        return f"{cfg.model_type} normalises q / k per head (q_norm); the fused graph does not"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"the fused graph's MLP is SiLU-gated; this model's activation is {cfg.hidden_act!r}"
    return None


class _Graph:
    """The nodes and initializers of one ONNX graph as it is written."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, *, name: str, domain: str = "",
             **attrs: Any) -> list[str]:
        from onnx import helper

        if isinstance(outputs, int):
            outputs = [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def weight(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, name: str, values: list[int]) -> str:
        return self.weight(name, np.asarray(values, dtype=np.int64))


def _np(tensor: Any) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _rotary_caches(model: Any, length: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin (length, head_dim / 2) from the model's own rotary module (its scaling rules included)."""
    import torch

    base = model.model
    with torch.no_grad():
        probe = torch.zeros(1, 1, head_dim, dtype=torch.float32)
        cos, sin = base.rotary_emb(probe, torch.arange(length, dtype=torch.int64)[None, :])  # (1, L, D)
    half = head_dim // 2
    cos, sin = _np(cos[0]), _np(sin[0])
    if not (np.allclose(cos[:, :half], cos[:, half:]) and np.allclose(sin[:, :half], sin[:, half:])):
        raise ExportError("the model's rotary embedding is not the half-rotation form GroupQueryAttention implements")
    return cos[:, :half].copy(), sin[:, :half].copy()


def build_fused_decoder(model: Any, *, context_length: int) -> Any:
    """The fused decoder of a Llama-family `model` as an onnx.ModelProto (FP32 weights)."""
    import torch
    from onnx import TensorProto, helper

    reason = fused_decoder_supported(model)
    if reason:
        raise ExportError(reason)
    from edgellm.exporting.decoder import decoder_spec

    spec = decoder_spec(model)
    cfg = model.config
    base = model.model
    heads, kv, dim = int(cfg.num_attention_heads), spec.num_kv_heads, spec.head_dim
    eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
    g = _Graph()

    # -- masks and lengths: seqlens_k = row sums - 1 (B,) int32; total_sequence_length () int32
    ones = g.const("const/axes_1", [1])
    rows = g.node("ReduceSum", ["attention_mask", ones], name="mask/sum", keepdims=0)[0]
    minus = g.node("Sub", [rows, g.weight("const/one_i64", np.array(1, dtype=np.int64))], name="mask/sub")[0]
    seqlens = g.node("Cast", [minus], name="mask/seqlens_k", to=TensorProto.INT32)[0]
    shape = g.node("Shape", ["attention_mask"], name="mask/shape")[0]
    total64 = g.node("Gather", [shape, g.weight("const/one_scalar", np.array(1, dtype=np.int64))], name="mask/total",
                     axis=0)[0]
    total = g.node("Cast", [total64], name="mask/total_i32", to=TensorProto.INT32)[0]
    cos, sin = _rotary_caches(model, context_length, dim)
    cos_name, sin_name = g.weight("rotary/cos_cache", cos), g.weight("rotary/sin_cache", sin)

    # -- embedding (FP32 here; the weight formats of edgellm.quantize.nbits store it smaller)
    embed = _np(base.embed_tokens.weight)
    table = g.weight("model.embed_tokens.weight", embed)
    x = g.node("Gather", [table, "input_ids"], name="embed/gather", axis=0)[0]  # (B, T, C)

    def norm(i: str, weight: Any, hidden: str, skip: str | None) -> tuple[str, str]:
        """RMSNorm of hidden (+ skip): returns (normed, residual sum)."""
        w = g.weight(f"{i}.weight", _np(weight))
        if skip is None:
            return g.node("SimplifiedLayerNormalization", [hidden, w], name=i, axis=-1, epsilon=eps,
                          stash_type=1)[0], hidden
        out = g.node("SkipSimplifiedLayerNormalization", [hidden, skip, w], [f"{i}/output_0", "", "", f"{i}/output_3"],
                     name=i, domain=_MS, epsilon=eps)
        return out[0], out[3]

    def matmul(name: str, weight: np.ndarray, hidden: str) -> str:
        """hidden @ weight.T, weight (N, K) as torch stores it."""
        return g.node("MatMul", [hidden, g.weight(f"{name}.weight", weight.T.copy())], name=name)[0]

    residual: str | None = None
    hidden = x
    for i, layer in enumerate(base.layers):
        attn, mlp = layer.self_attn, layer.mlp
        p = f"model.layers.{i}"
        h, residual = norm(f"{p}.input_layernorm", layer.input_layernorm.weight, hidden, residual)
        qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        qkv = matmul(f"{p}.attn.qkv", _np(qkv_w), h)  # (B, T, (H + 2 KV) D)
        biases = [m.bias for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
        if any(b is not None for b in biases):
            full = torch.cat([b if b is not None else torch.zeros(m.weight.shape[0])
                              for b, m in zip(biases, (attn.q_proj, attn.k_proj, attn.v_proj))])
            qkv = g.node("Add", [qkv, g.weight(f"{p}.attn.qkv.bias", _np(full))], name=f"{p}.attn.qkv_bias")[0]
        out = g.node(
            "GroupQueryAttention",
            [qkv, "", "", spec.past_names[2 * i], spec.past_names[2 * i + 1], seqlens, total, cos_name, sin_name],
            [f"{p}.attn.gqa/output_0", spec.present_names[2 * i], spec.present_names[2 * i + 1]],
            name=f"{p}.attn.gqa", domain=_MS, num_heads=heads, kv_num_heads=kv, do_rotary=1, rotary_interleaved=0,
            scale=float(getattr(attn, "scaling", dim**-0.5)),
        )[0]  # (B, T, H D)
        o = matmul(f"{p}.attn.o_proj", _np(attn.o_proj.weight), out)
        if attn.o_proj.bias is not None:
            o = g.node("Add", [o, g.weight(f"{p}.attn.o_proj.bias", _np(attn.o_proj.bias))], name=f"{p}.attn.o_bias")[0]
        h, residual = norm(f"{p}.post_attention_layernorm", layer.post_attention_layernorm.weight, o, residual)
        gate_up = matmul(f"{p}.mlp.gate_up", _np(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])), h)
        inter = int(mlp.gate_proj.weight.shape[0])
        split = g.weight(f"{p}.mlp.split", np.array([inter, inter], dtype=np.int64))
        gate, up = g.node("Split", [gate_up, split], 2, name=f"{p}.mlp.split_gate_up", axis=-1)
        sig = g.node("Sigmoid", [gate], name=f"{p}.mlp.sigmoid")[0]
        act = g.node("Mul", [gate, sig], name=f"{p}.mlp.silu")[0]
        prod = g.node("Mul", [act, up], name=f"{p}.mlp.gate_mul")[0]
        hidden = matmul(f"{p}.mlp.down_proj", _np(mlp.down_proj.weight), prod)

    final, _ = norm("model.norm", base.norm.weight, hidden, residual)  # (B, T, C)
    keep = g.node("Unsqueeze", ["num_logits_to_keep", g.const("const/axes_0", [0])], name="keep/unsqueeze")[0]
    start = g.node("Neg", [keep], name="keep/neg")[0]
    last = g.node("Slice", [final, start, g.const("const/int_max", [2**62]), ones], name="keep/slice")[0]  # (B, K, C)
    head = model.lm_head.weight
    head_np = embed if head.data_ptr() == base.embed_tokens.weight.data_ptr() else _np(head)
    g.node("MatMul", [last, g.weight("lm_head.weight", head_np.T.copy())], ["logits"], name="lm_head")

    value = helper.make_tensor_value_info
    inputs = [value("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              value("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              value("num_logits_to_keep", TensorProto.INT64, [])]
    inputs += [value(n, TensorProto.FLOAT, ["batch", kv, "past_sequence", dim]) for n in spec.past_names]
    outputs = [value("logits", TensorProto.FLOAT, ["batch", "kept", spec.vocab_size])]
    outputs += [value(n, TensorProto.FLOAT, ["batch", kv, "present_sequence", dim]) for n in spec.present_names]
    graph = helper.make_graph(g.nodes, "edgellm_fused_decoder", inputs, outputs, g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", FUSED_OPSET), helper.make_opsetid(_MS, 1)],
                              producer_name="edgellm")
    proto.ir_version = 8
    return proto


def write_fused_decoder(model: Any, path: Path, *, context_length: int) -> list[str]:
    """Write the fused decoder of `model` to `path` (one file; refuses over 1.8 GB). Returns the input names."""
    import onnx

    if sum(p.numel() for p in model.parameters()) * 4 > 1.8e9:
        raise ExportError(f"{type(model).__name__} has over 1.8 GB of FP32 weights; this exporter writes one file "
                          "(protobuf's 2 GB limit)")
    proto = build_fused_decoder(model, context_length=context_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return [i.name for i in proto.graph.input]
