"""Quantized decoder models: 8 / 4-bit block-quantized weights (ONNX Runtime MatMulNBits, `edgellm.quantize.nbits`),
INT8 of the plain graph (dynamic / weight-only), and NNCF INT8 / INT4 weights of the OpenVINO IR; the default model.

    export = write_decoder_models(model, tok, folder, prompts=prompts, context_length=2048, keep_plain=plain)
    manifest = decoder_manifest(model, export, context_length=2048, source="teacher/")
    quantize_decoder_models(folder, manifest, export.references, plain=export.plain, modes=("dynamic",),
                            weights=WeightFormats.from_config(lm),
                            calibration=calibration_sequences(tok, texts, count=lm.calibration_sequences))
    manifest.default_model = choose_default(manifest.models, 0.01)[0]

`export_causal_lm` does all of it in one call (FP32 export, quantized models, held-out perplexity, default model)
and publishes the artifact atomically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from edgellm.artifact import Manifest, ModelEntry, staging, write_manifest
from edgellm.errors import ConfigError
from edgellm.exporting.decoder import (
    DEFAULT_ATOL,
    TorchReference,
    check_entry,
    check_prompts,
    context_length_for,
    decoder_manifest,
    entry_generator,
    plain_inputs,
    runtime_perplexity,
    write_decoder_models,
)
from edgellm.recipe import ATTENTION_INPUTS, INT4_FALLBACK_LADDER, CausalLMConfig, QuantizeConfig

__all__ = [
    "INT8_MODES",
    "WeightFormats",
    "Int4Check",
    "fallback_step",
    "quantize_decoder",
    "quantize_decoder_nbits",
    "quantize_decoder_openvino",
    "quantize_decoder_openvino_int4",
    "quantize_decoder_models",
    "quantize_target_decoder",
    "decoder_quantize_modes",
    "calibration_sequences",
    "choose_default",
    "export_causal_lm",
]

log = logging.getLogger(__name__)

INT8_MODES = ("dynamic", "weight-only")  # plain-graph ONNX INT8 variants: activations+weights / weights only


def quantize_decoder(src: Path, dst: Path, *, mode: str) -> dict[str, Any]:
    """INT8 copy of an exported ONNX decoder through `edgellm.quantize.quantize_onnx` (no fusion, no calibration).

    "dynamic": int8 weights per channel, activations quantized per call (DynamicQuantizeLinear + MatMulInteger; the
    embedding Gather reads int8 too). "weight-only": int8 weights in MatMulNBits blocks, int8 compute
    (accuracy_level 4); the embedding table stays FP32. Returns the settings and op counts for the manifest.
    """
    if mode not in INT8_MODES:
        raise ConfigError(f"unknown INT8 mode {mode!r}; choose from {list(INT8_MODES)}")
    from edgellm.quantize.ort import quantize_onnx

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    result = quantize_onnx(src, dst, mode=mode, model_type=None, fuse=False)
    return {**result.settings, "ops": result.ops}


def quantize_decoder_openvino(src_xml: Path, dst_xml: Path) -> tuple[list[str], dict[str, Any], str]:
    """INT8 weights (NNCF compress_weights, asymmetric per channel) of an OpenVINO decoder IR; activations stay
    float. Returns (files, settings, inference precision hint)."""
    from edgellm.quantize.openvino import quantize_openvino

    result = quantize_openvino(src_xml, dst_xml, mode="weight-only")
    return [f.name for f in result.files], {**result.settings, "ops": result.ops}, result.inference_precision


def quantize_decoder_openvino_int4(src_xml: Path, dst_xml: Path, *, group_size: int) -> tuple[list[str], dict[str, Any]]:
    """4-bit weights (NNCF compress_weights INT4_ASYM, data-free, groups of `group_size`) of an OpenVINO decoder IR."""
    from edgellm.quantize.openvino import compress_weights_int4

    result = compress_weights_int4(src_xml, dst_xml, group_size=group_size)
    return [f.name for f in result.files], {**result.settings, "ops": result.ops}


def calibration_sequences(tokenizer: Any, texts: Sequence[str], *, count: int,
                          length: int = CausalLMConfig.calibration_tokens) -> list[list[int]]:
    """Up to `count` sequences of `length` token ids for GPTQ: `texts` one per line, packed back to back, taken
    evenly across `texts` (every source of a corpus list, which comes one source after the other); fewer,
    shorter ones when the texts run out."""
    texts = [t.strip() for t in texts if t and t.strip()]
    sample = texts[:: max(1, len(texts) // 64)]  # the mean tokens per text sets the stride that spans `texts`
    per_text = max(1.0, sum(len(tokenizer(t + "\n").input_ids) for t in sample) / max(1, len(sample)))
    step = max(1, int(len(texts) * per_text // (count * length)))
    out: list[list[int]] = []
    ids: list[int] = []
    for text in texts[::step]:
        ids += tokenizer(text + "\n").input_ids
        while len(ids) >= length and len(out) < count:
            out.append(ids[:length])
            ids = ids[length:]
        if len(out) >= count:
            return out
    if len(ids) >= 2 and len(out) < count:
        out.append(ids[:length])
    return out


@dataclass
class WeightFormats:
    """The block-quantized weight formats of a decoder artifact (ONNX Runtime MatMulNBits, `edgellm.quantize.nbits`);
    defaults from `CausalLMConfig`, where each one is documented."""

    bits: tuple[int, ...] = tuple(CausalLMConfig().weight_bits)
    block_size: int = CausalLMConfig.block_size
    block_size_8bit: int = CausalLMConfig.block_size_8bit
    block_size_8bit_by_name: dict[str, int] = field(default_factory=lambda: dict(CausalLMConfig().block_size_8bit_by_name))
    int4_method: str = CausalLMConfig.int4_method
    int4_fallback: float | str = CausalLMConfig.int4_fallback  # a share, or "auto" (`Int4Check`)
    int4_keep_8bit: tuple[str, ...] = ()
    lm_head_bits: int | None = CausalLMConfig.lm_head_bits
    lm_head_rows: int | None = CausalLMConfig.lm_head_rows

    @classmethod
    def from_config(cls, lm: CausalLMConfig) -> WeightFormats:
        return cls(tuple(lm.weight_bits), lm.block_size, lm.block_size_8bit, dict(lm.block_size_8bit_by_name),
                   lm.int4_method, lm.int4_fallback, tuple(lm.int4_keep_8bit), lm.lm_head_bits, lm.lm_head_rows)

    def eight_bit_settings(self) -> dict[str, Any]:
        """The settings `quantize_decoder_nbits(bits=8)` reads (a cache key's part): the 8-bit block sizes and the
        head's bits, and for a 4-bit head also the 4-bit block size and the rows `lm_head_rows` gives it (8-bit
        rounding is round-to-nearest without fallback, so the 4-bit method and fallback play no part)."""
        names = ["block_size_8bit", "block_size_8bit_by_name", "lm_head_bits"]
        if self.lm_head_bits == 4:
            names += ["block_size", "lm_head_rows"]
        return {name: getattr(self, name) for name in names}


def choose_default(entries: Sequence[ModelEntry], tolerance: float, *,
                   perplexity: Callable[[ModelEntry], float | None] | None = None,
                   speed: Callable[[ModelEntry], float | None] | None = None, what: str = "") -> tuple[str, str]:
    """The fastest ONNX Runtime model whose perplexity is within `tolerance` of FP32's; returns (name, reason).

    Fastest by `speed` (a model's measured decode tokens/s, timed in the same rounds) when it reads a number for
    every candidate; else in the assumed order int4 < int8 < fp32, and the reason says which. `perplexity` reads a
    model's number (default: its held-out `perplexity` metric; where it or FP32's is missing, the check prompts'
    ratio to torch); `what` names it in the reason ("validation "). Lossy models are never the default: a model over
    the tolerance is passed over, and the reason says so."""
    def read(entry: ModelEntry) -> float | None:
        return perplexity(entry) if perplexity is not None else entry.metrics.get("perplexity")

    by_name = {e.name: e for e in entries}
    fp32 = by_name.get("onnx-fp32")

    def ratio(entry: ModelEntry) -> float:
        got, base = read(entry), read(fp32) if fp32 is not None else None
        if got is not None and base is not None:
            return float(got) / float(base)
        return float(entry.metrics.get("vs_torch", {}).get("perplexity_ratio", float("inf")))

    ratios = {name: ratio(by_name[name]) for name in ("onnx-int4", "onnx-int8") if name in by_name}
    within = [name for name, r in ratios.items() if r <= 1.0 + tolerance]
    passed = [f"{name} (ratio {r:.4f})" for name, r in ratios.items() if name not in within]
    over = f"; passed over: {', '.join(passed)}" if passed else ""
    candidates = [*within, *(["onnx-fp32"] if fp32 is not None else [])]
    speeds = {name: speed(by_name[name]) for name in candidates} if speed is not None else {}
    if len(candidates) > 1 and speeds and all(v is not None for v in speeds.values()):
        name = max(candidates, key=lambda n: float(speeds[n]))  # type: ignore[arg-type]
        timed = ", ".join(f"{n} {float(v):.1f}" for n, v in speeds.items())  # type: ignore[arg-type]
        return name, (f"fastest measured decode ({timed} tokens/s) of the models within {tolerance:.1%} of FP32 "
                      f"{what}perplexity" + (f" (ratio {ratios[name]:.4f})" if name in ratios else "") + over)
    if within:
        return within[0], (f"fastest model (assumed order int4 < int8 < fp32) within {tolerance:.1%} of FP32 "
                           f"{what}perplexity (ratio {ratios[within[0]]:.4f})" + over)
    name = "onnx-fp32" if fp32 is not None else entries[0].name
    return name, "no quantized model within " + f"{tolerance:.1%} of FP32 {what}perplexity" + \
        (f" ({', '.join(passed)})" if passed else " (none made)")


@dataclass
class Int4Check:
    """What `int4_fallback: auto` judges each 4-bit model on, against the FP32 model on the same rows: validation
    perplexity within `tolerance` of FP32's and, given movie reviews, calibrated zero-shot sentiment accuracy at most
    `sentiment_drop` points under FP32's (perplexity alone missed a 22.5-point loss at 1.05x: limitations.md)."""

    sequences: list[list[int]]  # validation token ids
    sentiment: tuple[list[str], list[int]] = ([], [])  # validation reviews, labels indexing SENTIMENT_LABELS
    tolerance: float = CausalLMConfig.int4_tolerance
    sentiment_drop: float = CausalLMConfig.int4_sentiment_drop

    def score(self, generator: Any) -> dict[str, float]:
        """A runtime model's validation perplexity and (with reviews) calibrated sentiment accuracy in %."""
        from edgellm.evaluate import SENTIMENT_LABELS, zero_shot_sentiment

        out = {"perplexity": runtime_perplexity(generator, self.sequences)["perplexity"]}
        if self.sentiment[0]:
            out["sentiment"] = zero_shot_sentiment(generator, *self.sentiment, SENTIMENT_LABELS)["accuracy"]
        return out

    def judge(self, got: dict[str, float], fp32: dict[str, float]) -> dict[str, Any]:
        """`got` (`score`'s) against FP32's `fp32`: the ratio, the drop, and what misses its budget (empty: none)."""
        ratio = got["perplexity"] / fp32["perplexity"]
        out: dict[str, Any] = {**{k: round(v, 4) for k, v in got.items()}, "perplexity_ratio": round(ratio, 4)}
        misses = [f"perplexity {ratio:.4f}x FP32's"] if ratio > 1.0 + self.tolerance else []
        if "sentiment" in fp32:
            drop = out["sentiment_drop"] = round(fp32["sentiment"] - got["sentiment"], 2)
            if drop > self.sentiment_drop:
                misses.append(f"sentiment {drop:.1f} points under FP32's")
        return {**out, "misses": misses}

    def budget(self) -> dict[str, Any]:
        return {"perplexity_ratio": 1.0 + self.tolerance,
                **({"sentiment_drop": self.sentiment_drop} if self.sentiment[0] else {}),
                "rows": {"validation_texts": len(self.sequences), "sentiment_reviews": len(self.sentiment[0])}}


def quantize_decoder_nbits(src: Path, dst: Path, *, bits: int, weights: WeightFormats,
                           calibration: Sequence[Sequence[int]] = (),
                           judge: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """A block-quantized copy of a decoder graph (`edgellm.quantize.nbits`): 8 bits symmetric round-to-nearest
    (lossless in practice), 4 bits asymmetric with `weights.int4_method`, its 8-bit fallback share and the weights
    `int4_keep_8bit` names at 8 bits. Returns the settings and op counts.

    With `int4_fallback: "auto"` (4 bits), the weights are rounded once and the model written with each step of
    INT4_FALLBACK_LADDER in turn (its names added to `int4_keep_8bit`) until `judge()` (the model now at `dst`
    scored against FP32: `Int4Check.judge`) names no miss; when every step misses, the last (most 8-bit weights)
    stays. The trials go under "fallback_search"."""
    from edgellm.quantize.nbits import NBitsQuantizer

    method = weights.int4_method if bits == 4 else "rtn"
    if method == "gptq" and not calibration:
        raise ConfigError("4-bit GPTQ needs calibration text: give training texts, or int4_method: rtn")
    auto = bits == 4 and weights.int4_fallback == "auto"
    if auto and judge is None:
        raise ConfigError("int4_fallback: auto needs validation text to judge each 4-bit model on (the compress "
                          "pipeline gives it; export_causal_lm: eval_texts)")
    quantizer = NBitsQuantizer(src, bits=bits, block_size=weights.block_size, block_size_8bit=weights.block_size_8bit,
                               block_size_8bit_by_name=weights.block_size_8bit_by_name, method=method,
                               symmetric=bits == 8,  # 8 bits: no zero points (held-out perplexity 1.003x vs 1.008x asymmetric)
                               lm_head_bits=weights.lm_head_bits, lm_head_rows=weights.lm_head_rows,
                               calibration=calibration if method == "gptq" else ())
    if not auto:
        result = quantizer.write(dst, weights.int4_fallback if bits == 4 else 0.0,  # type: ignore[arg-type]
                                 weights.int4_keep_8bit if bits == 4 else ())
        return {**result.settings, "ops": result.ops}
    trials = []
    for names, share in INT4_FALLBACK_LADDER:
        keep = tuple(dict.fromkeys((*weights.int4_keep_8bit, *names)))
        result = quantizer.write(dst, share, keep)
        trials.append({"step": fallback_step(keep, share), "keep_8bit": list(keep), "fallback_fraction": share,
                       "share_8bit": round(quantizer.share_8bit(result.settings["fallback_8bit"]), 4),
                       **judge(),  # type: ignore[misc]
                       "size_bytes": dst.stat().st_size})
        log.info("int4_fallback auto, %s: %s", trials[-1]["step"], trials[-1])
        if not trials[-1]["misses"]:
            break
    kept = trials[-1]
    if kept["misses"]:
        log.warning("int4_fallback auto: no step keeps the budget (%s with %s); the model keeps %s",
                    "; ".join(kept["misses"]), kept["step"], kept["step"])
    search = {"ladder": [fallback_step(n, f) for n, f in INT4_FALLBACK_LADDER], "trials": trials,
              "chosen": kept["step"], "within_budget": not kept["misses"]}
    return {**result.settings, "ops": result.ops, "fallback_search": search}


def fallback_step(keep_8bit: Sequence[str], share: float) -> str:
    """A fallback step in words: "none", "attention inputs, down_proj", "attention inputs, down_proj + 50% by error"."""
    names = list(keep_8bit)
    if set(ATTENTION_INPUTS) <= set(names):
        names = ["attention inputs", *(n for n in names if n not in ATTENTION_INPUTS)]
    parts = [", ".join(names)] if names else []
    if share:
        parts.append(f"{share:.0%} by error")
    return " + ".join(parts) or "none"


def decoder_quantize_modes(config: QuantizeConfig | None) -> tuple[tuple[str, ...], bool]:
    """(plain-graph ONNX INT8 modes, whether to make OpenVINO INT8 / INT4 models) for a decoder from the recipe's
    quantize stage.

    The block-quantized weight formats (causal_lm.weight_bits: onnx-int8, onnx-int4) are made whenever ONNX Runtime
    is among quantize.backends; `dynamic` adds the plain graph with activations quantized per call (lossy on
    decoders: measured and recorded, never the default); `weight-only` adds nothing more. OpenVINO INT8 is NNCF
    weight-only for decoders. Calibrated static INT8 is not offered for decoders (ConfigError)."""
    if config is None or config.mode == "none":
        return (), False
    if config.mode == "static":
        raise ConfigError("quantize.mode = 'static' is not supported for text-generation (a KV-cache decoder); "
                          "use weight-only (block-quantized 8 / 4-bit weights) or dynamic")
    onnx_modes = ("dynamic",) if config.mode == "dynamic" and "onnxruntime" in config.backends else ()
    return onnx_modes, "openvino" in config.backends


def quantize_decoder_models(
    folder: Path,
    manifest: Manifest,
    references: Sequence[TorchReference],
    *,
    plain: Path | None = None,
    modes: Sequence[str] = (),
    weights: WeightFormats | None = None,
    calibration: Sequence[Sequence[int]] = (),
    openvino: bool = True,
    eval_sequences: Sequence[Sequence[int]] = (),
    int4_check: Int4Check | None = None,
) -> list[ModelEntry]:
    """Add the quantized models of a decoder artifact in `folder` to `manifest.models` (and return them).

    From onnx-fp32: onnx-int8 / onnx-int4 (`weights`; GPTQ calibrates on `calibration` token sequences). From the
    plain graph `plain`: onnx-int8-{mode} for each of `modes`. From openvino-fp32 (with `openvino`): NNCF INT8
    weights, and INT4 when 4 is among the weight bits. Each is compared with torch's `references` (statistics
    recorded, nothing raises) and, with `eval_sequences`, its held-out perplexity is measured through the runtime.
    `int4_check`: what `int4_fallback: auto` judges the 4-bit candidates on (`quantize_decoder_nbits`), FP32 scored
    once on the same rows.
    """
    bad = [m for m in modes if m not in INT8_MODES]
    if bad:
        raise ConfigError(f"unknown INT8 mode(s) {bad}; choose from {list(INT8_MODES)}")
    if modes and plain is None:
        raise ConfigError(f"plain-graph INT8 {list(modes)} needs the plain decoder graph (export with keep_plain)")
    weights = weights if weights is not None else WeightFormats()
    generation = manifest.generation or {}
    by_name = {e.name: e for e in manifest.models}

    def checked(entry: ModelEntry, label: str, inputs: list[str]) -> ModelEntry:
        return check_entry(folder, entry, generation, inputs, references, exact=False, label=label,
                           eval_sequences=eval_sequences)

    onnx_new: list[ModelEntry] = []
    fp32 = by_name.get("onnx-fp32")
    if fp32 is not None:
        for bits in weights.bits:
            dst = folder / f"model_int{bits}.onnx"
            entry = ModelEntry(name=f"onnx-int{bits}", path=dst.name, backend="onnxruntime", precision=f"int{bits}",
                               kv_cache=dict(fp32.kv_cache or {}))
            auto = bits == 4 and weights.int4_fallback == "auto" and int4_check is not None
            judge, reference = _int4_judge(folder, entry, fp32, generation, manifest.inputs, int4_check) \
                if auto else (None, {})
            entry.quantization = quantize_decoder_nbits(folder / fp32.path, dst, bits=bits, weights=weights,
                                                        calibration=calibration, judge=judge)
            if auto:
                entry.quantization["fallback_search"].update(fp32=reference,
                                                             budget=int4_check.budget())  # type: ignore[union-attr]
            onnx_new.append(checked(entry, f"ONNX {bits}-bit weights decoder", manifest.inputs))
    for mode in modes:
        dst = folder / ("model_int8_dynamic.onnx" if mode == "dynamic" else "model_int8_weights_plain.onnx")
        info = quantize_decoder(Path(plain), dst, mode=mode)  # type: ignore[arg-type]
        onnx_new.append(checked(
            ModelEntry(name=f"onnx-int8-{mode}", path=dst.name, backend="onnxruntime", precision="int8",
                       quantization=info), f"ONNX INT8 {mode} decoder (plain graph)", plain_inputs(generation)))
    ov_new: list[ModelEntry] = []
    ov32 = by_name.get("openvino-fp32")
    if openvino and ov32 is not None:
        stateful = ov32.metrics.get("stateful", True)
        xml = folder / ov32.path
        qxml = folder / "openvino_model_int8.xml"
        qfiles, info, hint = quantize_decoder_openvino(xml, qxml)
        ov_new.append(checked(
            ModelEntry(name="openvino-int8-weight-only", path=qxml.name, backend="openvino", precision="int8",
                       files=qfiles, inference_precision=hint, quantization=info, metrics={"stateful": stateful}),
            "OpenVINO INT8 weight-only decoder", plain_inputs(generation)))
        if 4 in weights.bits:
            q4 = folder / "openvino_model_int4.xml"
            q4files, q4info = quantize_decoder_openvino_int4(xml, q4, group_size=weights.block_size)
            ov_new.append(checked(
                ModelEntry(name="openvino-int4-weight-only", path=q4.name, backend="openvino", precision="int4",
                           files=q4files, inference_precision="f32", quantization=q4info,
                           metrics={"stateful": stateful}), "OpenVINO INT4 weight-only decoder",
                plain_inputs(generation)))
    generic = [e for e in manifest.models if not e.target]
    onnx_old = [e for e in generic if e.backend == "onnxruntime"]
    ov_old = [e for e in generic if e.backend != "onnxruntime"]
    manifest.models = [*onnx_old, *onnx_new, *ov_new, *ov_old, *(e for e in manifest.models if e.target)]
    return [*onnx_new, *ov_new]


def _int4_judge(folder: Path, entry: ModelEntry, fp32: ModelEntry, generation: dict[str, Any], inputs: list[str],
                check: Int4Check) -> tuple[Callable[[], dict[str, Any]], dict[str, float]]:
    """`quantize_decoder_nbits`'s judge of the 4-bit model `entry` (scored afresh on each call), and FP32's scores."""
    reference = {k: round(v, 4) for k, v in check.score(entry_generator(folder, fp32, generation, inputs)).items()}

    def judge() -> dict[str, Any]:
        return check.judge(check.score(entry_generator(folder, entry, generation, inputs)), reference)

    return judge, reference


def quantize_target_decoder(folder: Path, manifest: Manifest, entry: ModelEntry,
                            references: Sequence[TorchReference], *, weights: WeightFormats) -> ModelEntry:
    """Apply a target model's profile quantization (its `*-target.json` in `folder`) to the target's FP32 decoder
    in place: 8-bit block-quantized weights on ONNX Runtime, NNCF INT8 weights on OpenVINO (decoders get weight
    quantization whatever the profile's encoder INT8 mode). A profile without quantization leaves it FP32."""
    import json

    from edgellm.targets import profile_file_name

    profile = json.loads((folder / profile_file_name(entry.target or "")).read_text(encoding="utf-8"))
    if not profile.get("quantization"):
        return entry
    generation = manifest.generation or {}
    old = [f for f in entry.files if not f.endswith("-target.json")]
    if entry.backend == "onnxruntime":
        dst = folder / entry.path.replace(".onnx", "_int8.onnx")
        info = quantize_decoder_nbits(folder / entry.path, dst, bits=8,
                                      weights=replace(weights, bits=(8,)))
        files = [dst.name]
        inputs = manifest.inputs
    else:
        dst = folder / entry.path.replace(".xml", "_int8.xml")
        files, info, hint = quantize_decoder_openvino(folder / entry.path, dst)
        entry.inference_precision = profile.get("inference_precision") or hint  # the profile's compute wins
        inputs = plain_inputs(generation)
    for name in old:
        (folder / name).unlink()
    entry.path, entry.precision, entry.quantization = dst.name, "int8", {**info, "profile": profile["quantization"]}
    entry.files = [*files, *(f for f in entry.files if f.endswith("-target.json"))]
    entry.metrics = {k: v for k, v in entry.metrics.items() if k not in ("vs_torch", "size_bytes")}
    return check_entry(folder, entry, generation, inputs, references, exact=False,
                       label=f"{entry.name} INT8 {entry.backend} decoder")


def export_causal_lm(
    model: Any,
    output: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    formats: Sequence[str] = ("onnx", "openvino"),
    quantize: Sequence[str] = (),
    weights: WeightFormats | None = None,
    graph: str = "fused",
    calibration_texts: Sequence[str] = (),
    calibration_count: int = CausalLMConfig.calibration_sequences,
    calibration_tokens: int = CausalLMConfig.calibration_tokens,
    default_tolerance: float = CausalLMConfig.default_tolerance,
    context_length: int | None = None,
    texts: Sequence[str] | None = None,
    atol: float = DEFAULT_ATOL,
    stateful: bool = True,
    openvino_int8: bool | None = None,
    eval_texts: Sequence[str] = (),
    eval_max_length: int | None = None,
    source: str = "",
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Export a causal LM (a loaded model, a TrainedModel, or a name for `load_causal_lm`) into a text-generation
    artifact.

    The FP32 ONNX decoder is checked against torch on real text (logits within `atol`, identical greedy tokens
    for 32 cached steps) before anything is published; quantized models record their agreement with torch (see
    `write_decoder_models` for `graph`, `quantize_decoder_models` for `weights` and `quantize`; GPTQ calibrates on `calibration_texts`, by default
    `texts`). The default model is the first of int4, int8, fp32 whose perplexity is within `default_tolerance`
    of FP32's (`choose_default`; nothing is timed here: the compress pipeline's evaluate stage chooses again by
    measured speed). `eval_texts` (held-out text, cut to
    `eval_max_length` tokens): each model's perplexity on them, through the runtime, goes into its metrics. `metrics` (e.g. distillation), `data` (the
    split record) and `recipe` go into the manifest. Written atomically: on error nothing appears at `output`.
    """
    from edgellm.data import SAMPLE_TEXTS
    from edgellm.models import load_causal_lm, load_tokenizer

    if hasattr(model, "tokenizer") and hasattr(model, "model") and not hasattr(model, "config"):  # a TrainedModel
        tokenizer = tokenizer or model.tokenizer
        source = source or getattr(model, "source", "")
        metrics = {**getattr(model, "metrics", {}), **(metrics or {})}
        model = model.model
    if isinstance(model, (str, os.PathLike)):
        source = source or str(model)
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_causal_lm(model)
    if tokenizer is None:
        raise ConfigError("export_causal_lm needs the tokenizer of the model")
    bad = [m for m in quantize if m not in INT8_MODES]
    if bad:
        raise ConfigError(f"unknown INT8 mode(s) {bad}; choose from {list(INT8_MODES)}")
    model.eval()
    weights = weights if weights is not None else WeightFormats()
    length = context_length_for(model, context_length)
    prompts = check_prompts(tokenizer, texts or SAMPLE_TEXTS)
    calibration = calibration_sequences(tokenizer, calibration_texts or texts or SAMPLE_TEXTS,
                                        count=calibration_count, length=min(length, calibration_tokens)) \
        if 4 in weights.bits and weights.int4_method == "gptq" and "onnx" in formats else []
    eval_sequences = [ids[: min(length, eval_max_length or length)]
                      for ids in (tokenizer(t).input_ids for t in eval_texts) if len(ids) >= 2]
    with staging(output, overwrite=overwrite) as stage:
        tokenizer.backend_tokenizer.save(str(stage / "tokenizer.json"))
        plain = stage / ".plain" / "model.onnx" if quantize and "onnx" in formats else None
        export = write_decoder_models(model, tokenizer, stage, prompts=prompts, formats=formats, graph=graph,
                                      context_length=length, atol=atol, stateful=stateful,
                                      eval_sequences=eval_sequences, keep_plain=plain)
        manifest = decoder_manifest(model, export, context_length=length, source=source)
        if "onnx" not in formats:
            weights = replace(weights, bits=())
        ov_quant = openvino_int8 if openvino_int8 is not None else bool(quantize or weights.bits)
        check = Int4Check(eval_sequences) if weights.int4_fallback == "auto" and eval_sequences else None
        quantize_decoder_models(stage, manifest, export.references, plain=plain,
                                modes=quantize if "onnx" in formats else (), weights=weights,
                                calibration=calibration, openvino=ov_quant, eval_sequences=eval_sequences,
                                int4_check=check)
        if plain is not None:
            import shutil

            shutil.rmtree(plain.parent)
        default, why = choose_default(manifest.models, default_tolerance)
        manifest.default_model = default
        manifest.data = data
        manifest.recipe = recipe
        manifest.metrics.update(metrics or {})
        manifest.metrics["export"] = {e.name: e.metrics for e in manifest.models}
        manifest.metrics["default_model"] = {"name": default, "reason": why}
        write_manifest(stage, manifest)
    return manifest
