"""INT8 presets per CPU family / device: the settings that make INT8 fast, and correct, on each.

Device profiles name a preset by key (``targets/cpu-x86-avx512.yaml``: ``quantization: {preset: avx512-vnni}``);
a recipe may name one in ``quantize.preset``; with neither, `detect_preset()` picks this machine's family.

Keys:

``avx512-vnni``
    x86-64 with AVX-512 VNNI or AVX-VNNI (Intel Cascade Lake and later, Sapphire Rapids with AMX, AMD Zen 4 and
    later). ONNX Runtime dynamic INT8: int8 weights, one scale per output channel, uint8 activations quantized on
    the fly, full 8-bit range (VPDPBUSD accumulates u8 x s8 in 32 bits, so nothing saturates). Transformer
    subgraphs are fused first (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), so the
    quantizer emits QAttention / QEmbedLayerNormalization and MatMulInteger on big fused blocks: measured on MiniLM
    this is what makes INT8 faster than Optimum's per-MatMul dynamic INT8 (bench/suites/minilm-int8.yaml). OpenVINO:
    NNCF INT8 for the CPU, float parts run with the f32 precision hint (exact; bf16 is faster on AMX but moves
    accuracy, so it is a choice the user makes in a profile).
``avx2``
    x86-64 with AVX2 and no VNNI (Intel Haswell .. Comet Lake, AMD Zen 1-3). As avx512-vnni, but with
    ``reduce_range``: VPMADDUBSW adds pairs of u8 x s8 products into 16 bits and saturates with full-range weights,
    so weights are quantized to 7 bits.
``arm64``
    64-bit Arm with the dot-product extension (Cortex-A76 / Raspberry Pi 5, Apple, Graviton). ONNX Runtime's MLAS /
    KleidiAI kernels run u8 x s8 dynamic INT8 with per-channel scales and the fused transformer ops; no saturation
    issue, full range.
``intel-npu``
    Intel NPU through OpenVINO: NNCF static INT8 with the NPU's quantization rules (``target_device=NPU``), float
    parts in f16. No ONNX Runtime INT8 (the NPU does not run DynamicQuantizeLinear / MatMulInteger).
``qnn-htp``
    Qualcomm Hexagon NPU through ONNX Runtime's QNN execution provider: static QDQ only, uint8 activations and
    uint8 weights with one scale per tensor (what the HTP backend takes), standard ONNX ops only (no com.microsoft
    fused ops, no dynamic quantization).

Torch-free.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from typing import Any

from edgellm.config import suggest
from edgellm.errors import UnsupportedTargetError

__all__ = ["Preset", "PRESETS", "get_preset", "detect_preset", "DYNAMIC_OPS", "CONTRIB_DOMAIN"]

log = logging.getLogger(__name__)

CONTRIB_DOMAIN = "com.microsoft"
# ONNX ops that only exist when activations are quantized at run time (no static-graph NPU runs them)
DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"})


@dataclass(frozen=True)
class Preset:
    """Quantization settings for one CPU family or device. Fields a QuantizeConfig leaves None come from here."""

    key: str  # the name profiles and recipes use
    description: str  # one line
    backends: tuple[str, ...]  # runtimes this preset makes INT8 models for
    modes: tuple[str, ...]  # quantization modes the device runs (first = recommended)
    per_channel: bool  # one weight scale per output channel
    reduce_range: bool  # 7-bit weights (AVX2 without VNNI saturates 16-bit pair sums otherwise)
    fuse: bool  # ONNX Runtime: fuse transformer subgraphs into com.microsoft ops before quantizing
    activation_type: str  # static QDQ activations: "uint8" or "int8"
    weight_type: str  # "int8" or "uint8"
    contrib_ops: bool  # the runtime runs com.microsoft contrib ops (fused attention, MatMulInteger+scale ...)
    nncf_target: str  # nncf.TargetDevice name for OpenVINO INT8
    inference_precision: str  # OpenVINO INFERENCE_PRECISION_HINT for the float parts of INT8 models
    cpu_flags: tuple[str, ...] = ()  # /proc/cpuinfo flags that identify the family (any one)
    arch: str | None = None  # platform.machine() family: x86_64 / aarch64; None = not a CPU preset

    def unsupported_ops(self, ops: dict[tuple[str, str], int]) -> list[str]:
        """Op types (from {(domain, op_type): count}) that this device's runtime cannot run."""
        bad = []
        for (domain, op), _count in sorted(ops.items()):
            if not self.contrib_ops and domain == CONTRIB_DOMAIN:
                bad.append(f"{domain}.{op}")
            elif not self.contrib_ops and op in DYNAMIC_OPS:
                bad.append(op)
        return bad

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("description", "cpu_flags")}


# What the three CPU families share: both engines, every mode, per-channel int8 weights with uint8 activations,
# ORT's fused contrib ops, NNCF's CPU target, float32 inference. They differ in reduce_range and the CPU flags.
_CPU: dict[str, Any] = dict(backends=("onnxruntime", "openvino"), modes=("dynamic", "static", "weight-only"),
                            per_channel=True, fuse=True, activation_type="uint8", weight_type="int8", contrib_ops=True,
                            nncf_target="CPU", inference_precision="f32")

PRESETS: dict[str, Preset] = {
    p.key: p
    for p in (
        Preset(key="avx512-vnni", **_CPU, reduce_range=False, cpu_flags=("avx512_vnni", "avx_vnni", "amx_int8"),
               arch="x86_64",
               description="x86-64 with AVX-512 VNNI / AVX-VNNI / AMX: dynamic INT8, per-channel, fused transformer ops"),
        Preset(key="avx2", **_CPU, reduce_range=True, cpu_flags=("avx2",), arch="x86_64",
               description="x86-64 with AVX2, no VNNI: dynamic INT8 with reduce_range (7-bit weights) against "
                           "saturation"),
        Preset(key="arm64", **_CPU, reduce_range=False, cpu_flags=("asimddp", "asimd"), arch="aarch64",
               description="64-bit Arm with dot-product: dynamic INT8, per-channel, full range, fused transformer ops"),
        Preset(
            key="intel-npu",
            description="Intel NPU via OpenVINO: NNCF static INT8 for the NPU, f16 float parts",
            backends=("openvino",),
            modes=("static", "weight-only"),
            per_channel=True,
            reduce_range=False,
            fuse=False,
            activation_type="int8",
            weight_type="int8",
            contrib_ops=False,
            nncf_target="NPU",
            inference_precision="f16",
        ),
        Preset(
            key="qnn-htp",
            description="Qualcomm HTP via ONNX Runtime QNN EP: static QDQ, uint8 per-tensor, standard ops only",
            backends=("onnxruntime",),
            modes=("static",),
            per_channel=False,
            reduce_range=False,
            fuse=False,
            activation_type="uint8",
            weight_type="uint8",
            contrib_ops=False,
            nncf_target="ANY",
            inference_precision="f16",
        ),
    )
}


def get_preset(key: str) -> Preset:
    """The preset named `key`; UnsupportedTargetError naming the known keys otherwise."""
    if not isinstance(key, str) or key not in PRESETS:
        raise UnsupportedTargetError(
            f"unknown quantization preset {key!r}{suggest(str(key), PRESETS)}; known presets: {', '.join(PRESETS)}"
        )
    return PRESETS[key]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_preset() -> str:
    """This machine's CPU-family preset key (avx512-vnni, avx2 or arm64)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    flags = _cpu_flags()
    for key in ("avx512-vnni", "avx2"):
        if flags.intersection(PRESETS[key].cpu_flags):
            return key
    log.warning("CPU flags show neither VNNI nor AVX2; using the avx2 preset (reduce_range) to be safe")
    return "avx2"
