"""The quantize stage: FP32 artifact in, the same artifact with INT8 models added (each evaluated on validation).

    from edgellm.quantize import quantize
    manifest = quantize("artifacts/minilm", "artifacts/minilm-int8", config=QuantizeConfig(mode="dynamic"),
                        data=load_task_data(DataConfig(name="movie-reviews")))

`quantize_models` is the same work on a folder being written (the pipeline's staging folder).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgellm.artifact import Manifest, ModelEntry, check_output, staging, verify_artifact, write_manifest
from edgellm.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    OutputExistsError,
    QuantizationError,
    UnsupportedTargetError,
)
from edgellm.quantize.accuracy import FallbackResult, check_tolerance, onnx_sensitivity, search_fallback
from edgellm.quantize.calibration import text_feeds
from edgellm.quantize.presets import Preset, detect_preset, get_preset
from edgellm.recipe import QuantizeConfig

__all__ = ["QuantData", "quantize", "quantize_models", "resolve_data", "int8_name"]

log = logging.getLogger(__name__)

_SENSITIVITY_SAMPLES = 32  # texts used to rank ops for the accuracy-aware mode
_CHECK_SAMPLES = 8  # texts used to check a fused graph against the original


@dataclass
class QuantData:
    """Texts for the quantize stage: calibration (training texts) and labelled validation.

    `labels` are class ids or class names of the artifact (text-classification); None for feature-extraction,
    where each INT8 model is scored by its embeddings' cosine to the FP32 model's (x 100).
    """

    calibration: list[str]
    validation: list[str]
    labels: list[Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    own_texts: bool = False  # the task's own texts, their tokenizer coverage reported already: no [UNK] guard

    @classmethod
    def from_task_data(cls, data: Any) -> QuantData:
        """From `edgellm.data.TaskData`: calibration = train texts, validation = validation split."""
        names = list(data.labels or [])
        labels = None
        if data.validation.labels is not None:
            labels = [names[i] if names else i for i in data.validation.labels]
        return cls(list(data.train.texts), list(data.validation.texts), labels,
                   {"task": data.task, "source": dict(getattr(data, "source", {}) or {})})


def int8_name(name: str, precision: str = "int8") -> str:
    """Model name of the quantized twin: onnx-fp32 -> onnx-int8; other names get a suffix."""
    return name.replace("fp32", precision) if "fp32" in name else f"{name}-{precision}"


def _twin_path(path: str, precision: str) -> str:
    p = Path(path)
    return p.with_name(f"{p.stem}_{precision}{p.suffix}").as_posix()


def _as_data(data: Any, manifest: Manifest) -> QuantData:
    if data is None:
        raise DataError("the quantize stage needs data: calibration texts and a labelled validation split "
                        "(every INT8 model is evaluated against FP32)")
    if not isinstance(data, QuantData):
        if not all(hasattr(data, k) for k in ("train", "validation", "labels")):
            raise DataError(f"quantize data must be a QuantData or edgellm.data.TaskData, not {type(data).__name__}")
        task = getattr(data, "task", manifest.task)
        if task != manifest.task:
            raise DataError(f"the data is for {task}, but the artifact is a {manifest.task} model: "
                            "give the data of the task this model was trained for")
        data = QuantData.from_task_data(data)
    for name, texts in (("calibration", data.calibration), ("validation", data.validation)):
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise DataError(f"{name} data must be a list of texts, not {type(texts).__name__}")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"{name} text {bad} is a {type(texts[bad]).__name__}, not a str")
    if not data.validation:
        raise DataError("validation data is empty: every INT8 model is evaluated on it; give the validation split")
    if manifest.task == "text-classification":
        data = QuantData(list(data.calibration), list(data.validation), _label_ids(data, manifest), data.source,
                         data.own_texts)
    return data


def _label_ids(data: QuantData, manifest: Manifest) -> list[int]:
    names = list(manifest.labels or [])
    if data.labels is None:
        raise DataError("text-classification validation needs labels (class names or ids); got none")
    if len(data.labels) != len(data.validation):
        raise DataError(f"{len(data.validation)} validation texts but {len(data.labels)} labels")
    ids = []
    for i, label in enumerate(data.labels):
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer, str)):
            raise DataError(f"validation label {i} is {label!r}: give class names {names} or ids 0..{len(names) - 1} "
                            "(scores or other values are data of another task)")
        if isinstance(label, str):
            if label not in names:
                raise DataError(f"validation label {label!r} is not one of the model's classes {names}: "
                                "the data is of another task")
            ids.append(names.index(label))
        else:
            if not 0 <= int(label) < len(names):
                raise DataError(f"validation label {int(label)} is out of range for the model's {len(names)} classes "
                                f"{names}: the data is of another task")
            ids.append(int(label))
    return ids


@dataclass
class _Plan:
    """How one FP32 model entry is quantized."""

    source: ModelEntry
    preset: Preset
    mode: str  # the mode actually run on this backend
    requested: str  # the mode asked for


def _plans(manifest: Manifest, config: QuantizeConfig) -> list[_Plan]:
    if config.mode == "none":
        return []
    unknown = [b for b in config.backends if b not in ("onnxruntime", "openvino")]
    if unknown:
        raise ConfigError(f"quantize.backends has unknown backend(s) {unknown}; choose onnxruntime / openvino")
    sources = [m for m in manifest.models if m.backend in config.backends and m.precision == "fp32"]
    if not sources:
        have = [f"{m.name} ({m.backend}, {m.precision})" for m in manifest.models]
        if any(m.backend in config.backends and m.precision == "int8" for m in manifest.models):
            raise QuantizationError(f"the artifact holds no FP32 model for {config.backends} to quantize, only "
                                    f"already quantized ones: {have}")
        raise ConfigError(f"the artifact has no FP32 model for quantize.backends {config.backends}; it has {have}")
    missing = [b for b in config.backends if not any(m.backend == b for m in sources)]
    if missing:
        raise ConfigError(f"quantize.backends asks for {missing}, but the artifact has no FP32 model for it; "
                          "export that format or drop it from quantize.backends")
    plans = []
    for entry in sources:
        preset_key, mode = config.preset, config.mode
        if entry.target:
            profile_q = _target_quantization(entry.target)
            if profile_q is False:
                log.info("model %s: target %s asks for no quantization; it stays float", entry.name, entry.target)
                continue
            if profile_q is not None:
                preset_key = profile_q.preset
                mode = profile_q.mode
        preset = get_preset(preset_key or detect_preset())
        if entry.backend not in preset.backends:
            if entry.target or config.preset:
                raise UnsupportedTargetError(f"preset {preset.key!r} makes INT8 for {list(preset.backends)}, "
                                             f"not for {entry.backend} (model {entry.name})")
            continue
        run_mode = mode
        if entry.backend == "openvino" and mode == "dynamic":
            run_mode = "static"  # OpenVINO IR has no dynamic-activation INT8 format; NNCF static is its INT8
        if run_mode not in preset.modes:
            raise UnsupportedTargetError(f"preset {preset.key!r} runs INT8 modes {list(preset.modes)}, not {run_mode!r} "
                                         f"(model {entry.name})")
        plans.append(_Plan(entry, preset, run_mode, mode))
    return plans


def _target_quantization(target: str) -> Any:
    """The profile's quantization section; False when the profile says none; None when it cannot be read."""
    try:
        from edgellm.targets import load_target

        profile = load_target(target)
    except Exception as exc:  # a profile that moved away: fall back to the recipe's settings
        log.warning("target profile %s cannot be read (%s); quantizing with the recipe's settings", target, exc)
        return None
    return profile.quantization if profile.quantization is not None else False


# -- evaluation ---------------------------------------------------------------------------------------------------


class _Evaluator:
    """Scores models of one artifact on validation: accuracy (classification) or cosine x 100 to FP32 (embeddings)."""

    def __init__(self, manifest: Manifest, tokenizer: Path, data: QuantData, threads: int | None) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.data = data
        self.threads = threads
        self._reference: dict[str, np.ndarray] = {}

    def entry(self, folder: Path, name: str, reference: str | None = None) -> dict[str, Any]:
        from edgellm.runtime import load

        model = load(folder, model=name, verify=False, threads=self.threads)
        if self.manifest.task == "text-classification":
            from edgellm.evaluate import evaluate_classifier

            out = evaluate_classifier(model, self.data.validation, self.data.labels or [])
            out["metric"] = out["accuracy"]
            return out
        emb = model.embed(self.data.validation)
        if reference is None:
            self._reference[name] = emb
            return {"metric": 100.0, "mean_cosine_to_fp32": 1.0, "examples": len(emb)}
        ref = self._reference[reference]
        ru = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
        cu = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        cos = float((ru * cu).sum(1).mean())
        return {"metric": 100.0 * cos, "mean_cosine_to_fp32": cos, "examples": len(emb)}

    def file(self, path: Path, backend: str, reference: str, *, inference_precision: str | None = None,
             static_shapes: dict[str, list[int]] | None = None) -> dict[str, Any]:
        """Score a model file outside the artifact (a trial of the accuracy-aware search).

        The file's folder becomes a one-model artifact (the tokenizer is copied next to it); keep it otherwise empty.
        """
        folder = path.parent
        shutil.copy2(self.tokenizer, folder / self.manifest.tokenizer)
        files = [path.name] + ([path.with_suffix(".bin").name] if backend == "openvino" else [])
        files += [p.name for p in [path.with_name(path.name + ".data")] if p.exists()]
        entry = ModelEntry(name="trial", path=path.name, backend=backend, precision="int8", files=files,
                           inference_precision=inference_precision, static_shapes=static_shapes)
        manifest = Manifest(task=self.manifest.task, models=[entry], default_model="trial",
                            tokenizer=self.manifest.tokenizer, max_length=self.manifest.max_length,
                            labels=self.manifest.labels, pooling=self.manifest.pooling,
                            normalize=self.manifest.normalize, inputs=list(self.manifest.inputs))
        write_manifest(folder, manifest)
        return self.entry(folder, "trial", reference)


# -- the stage ----------------------------------------------------------------------------------------------------


def _no_fallback_reason(backend: str, mode: str) -> str:
    if backend == "openvino":
        return ("NNCF's quantize_with_accuracy_control stopped short of it" if mode == "static"
                else "OpenVINO weight-only INT8 has no per-op fallback here")
    return "the final model scored lower than its accuracy-control trial"


def _data_key(data: QuantData) -> str:
    """sha256 of the validation texts and labels: FP32 scores are reused only for the same data."""
    import hashlib

    h = hashlib.sha256()
    for i, text in enumerate(data.validation):
        label = "" if data.labels is None else str(data.labels[i])
        h.update(f"{label}\t{text}\n".encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


def _size(folder: Path, files: Sequence[str]) -> int:
    return sum((folder / f).stat().st_size for f in files)


def quantize_models(
    folder: str | Path,
    manifest: Manifest,
    *,
    config: QuantizeConfig | None = None,
    data: QuantData | Any,
    threads: int | None = None,
    suffix: str = "",
    own_texts: bool = False,
) -> list[ModelEntry]:
    """Add INT8 twins of the FP32 models in `folder` (an artifact being written) to `manifest` and the folder.

    Every new model, and its FP32 source, is evaluated on the validation texts; the numbers go into each entry's
    metrics and `manifest.metrics["quantize"]`. With `config.tolerance`, ops are kept in float until the drop is
    within it (ONNX Runtime: edgellm's sensitivity ranking + `nodes_to_exclude`; OpenVINO: NNCF's
    quantize_with_accuracy_control), or QuantizationError says the tolerance cannot be met.
    The default model becomes the generic ONNX Runtime INT8 model when one was made (else the generic OpenVINO
    one). `suffix` is appended to the new models' names and files (several INT8 variants in one artifact:
    "-static", "-entropy" ...). Returns the new entries; the caller writes the final manifest (`write_manifest`).

    Calibration texts mostly unknown to the tokenizer ([UNK]) are refused as data of another language or task,
    unless `own_texts` says they are the task's own (the pipeline, which reported their coverage at the start).
    """
    if suffix and (not isinstance(suffix, str) or not all(c.isalnum() or c in "-_." for c in suffix)):
        raise ConfigError(f"suffix {suffix!r} may hold only letters, digits, '-', '_' and '.'")
    config = config or QuantizeConfig()
    folder = Path(folder)
    if manifest.task == "text-generation":
        raise ConfigError("the quantize stage evaluates encoders; for a decoder call "
                          "edgellm.quantize.quantize_onnx(src, dst, mode='dynamic' or 'weight-only') directly")
    if config.tolerance is not None:
        check_tolerance(config.tolerance)
    plans = _plans(manifest, config)
    if not plans:
        return []
    qdata = _as_data(data, manifest)
    if own_texts:
        qdata = dataclasses.replace(qdata, own_texts=True)
    tokenizer = folder / manifest.tokenizer
    evaluator = _Evaluator(manifest, tokenizer, qdata, threads)
    existing = {m.name for m in manifest.models}
    new_entries: list[ModelEntry] = []
    summary: dict[str, Any] = {}
    write_manifest(folder, manifest)  # the runtime's load() reads it while models are evaluated
    data_key = _data_key(qdata)
    for plan in plans:
        src = plan.source
        started = time.perf_counter()
        fp32_eval = src.metrics.get("validation") or {}
        if fp32_eval.get("data_sha256") != data_key or (manifest.task != "text-classification"
                                                        and src.name not in evaluator._reference):
            fp32_eval = {**evaluator.entry(folder, src.name), "data_sha256": data_key}
            src.metrics["validation"] = fp32_eval
        if plan.source.backend == "onnxruntime":
            entry = _quantize_ort(folder, manifest, plan, config, qdata, evaluator, fp32_eval, suffix)
        else:
            entry = _quantize_ov(folder, manifest, plan, config, qdata, evaluator, fp32_eval, suffix)
        if entry.name in existing:
            log.info("replacing the existing model %s", entry.name)
            manifest.models = [m for m in manifest.models if m.name != entry.name]
        manifest.models.append(entry)
        write_manifest(folder, manifest)
        evaluation = evaluator.entry(folder, entry.name, reference=src.name)
        size = _size(folder, entry.files)
        fp32_size = _size(folder, src.files)
        entry.metrics.update({
            "validation": evaluation,
            "metric_fp32": fp32_eval["metric"],
            "drop": fp32_eval["metric"] - evaluation["metric"],
            "size_bytes": size,
            "size_vs_fp32": size / fp32_size if fp32_size else None,
            "seconds": time.perf_counter() - started,
        })
        if config.tolerance is not None and entry.metrics["drop"] > config.tolerance + 1e-9:
            raise QuantizationError(
                f"{entry.name}: the accuracy drop on validation is {entry.metrics['drop']:.2f} points, over the "
                f"tolerance of {config.tolerance}: the tolerance cannot be met in mode {plan.mode} "
                f"({_no_fallback_reason(entry.backend, plan.mode)}). "
                "Raise the tolerance or choose another mode"
            )
        new_entries.append(entry)
        summary[entry.name] = {
            "source": src.name, "mode": entry.quantization.get("mode") if entry.quantization else None,
            "metric": evaluation["metric"], "metric_fp32": fp32_eval["metric"],
            "drop": entry.metrics["drop"], "size_bytes": size, "size_vs_fp32": entry.metrics["size_vs_fp32"],
            "fell_back": (entry.quantization or {}).get("accuracy_control", {}).get("fell_back", []),
        }
        log.info("%s: %s %.2f (FP32 %.2f), %.1f MB (%.0f%% of FP32)", entry.name,
                 "accuracy" if manifest.task == "text-classification" else "cosine x100", evaluation["metric"],
                 fp32_eval["metric"], size / 1e6, 100 * size / max(fp32_size, 1))
    if config.fp16:
        new_entries += _fp16_entries(folder, manifest, config, evaluator)
    record = manifest.metrics.setdefault("quantize", {})
    record.update({
        "metric": "accuracy" if manifest.task == "text-classification" else "cosine_to_fp32_x100",
        "split": "validation",
        "examples": len(qdata.validation),
    })
    record.setdefault("models", {}).update(summary)
    generic = [e for e in new_entries if e.target is None and e.precision == "int8"]
    generic.sort(key=lambda e: e.backend != "onnxruntime")  # ONNX Runtime's first, else OpenVINO's
    if generic and not suffix:
        manifest.default_model = generic[0].name
    return new_entries


def _calibration(folder: Path, manifest: Manifest, plan: _Plan, config: QuantizeConfig, qdata: QuantData,
                 input_names: Sequence[str], input_types: dict[str, Any] | None = None,
                 samples: int | None = None, pad_to_longest: bool = False) -> list[dict[str, np.ndarray]]:
    shapes = plan.source.static_shapes or {}
    shape = next(iter(shapes.values()), None)
    return text_feeds(folder / manifest.tokenizer, qdata.calibration, samples=samples or config.calibration_samples,
                      max_length=manifest.max_length, input_names=input_names, input_types=input_types,
                      static_shape=shape, pad_to_longest=pad_to_longest, own_texts=qdata.own_texts)


def _quantize_ort(folder: Path, manifest: Manifest, plan: _Plan, config: QuantizeConfig, qdata: QuantData,
                  evaluator: _Evaluator, fp32_eval: dict[str, Any], suffix: str) -> ModelEntry:
    import onnx

    from edgellm.quantize.ort import OnnxQuantizer, model_inputs

    src = plan.source
    src_path = folder / src.path
    inputs = model_inputs(onnx.load(str(src_path), load_external_data=False))
    calib = None
    if plan.mode == "static":  # ORT's histogram calibrators (entropy, percentile) stack samples: one length
        calib = _calibration(folder, manifest, plan, config, qdata, list(inputs), inputs,
                             pad_to_longest=config.calibration_method != "minmax")
    check = None
    if qdata.calibration or qdata.validation:
        texts = qdata.calibration or qdata.validation
        check = _calibration(folder, manifest, plan, config, QuantData(texts, [], own_texts=qdata.own_texts),
                             list(inputs), inputs, samples=min(_CHECK_SAMPLES, len(texts)))
    name = int8_name(src.name) + suffix
    rel = _twin_path(src.path, "int8" + suffix)
    dst = folder / rel
    with tempfile.TemporaryDirectory(prefix="edgellm-quant-") as tmp:
        quantizer = OnnxQuantizer(
            src_path, Path(tmp) / "work", mode=plan.mode, preset=plan.preset, per_channel=config.per_channel,
            reduce_range=config.reduce_range, fuse=config.fuse, model_type=manifest.source.get("model_type"),
            quantize_embeddings=config.quantize_embeddings,
            calibration=calib, calibration_method=config.calibration_method, check_feeds=check,
        )
        fallback: FallbackResult | None = None
        if config.tolerance is None:
            result = quantizer.quantize(dst, exclude=config.exclude)
        else:
            candidates = [c for c in quantizer.candidates if c.name not in set(config.exclude)]
            sens_texts = qdata.calibration or qdata.validation
            sens_feeds = _calibration(folder, manifest, plan, config,
                                      QuantData(sens_texts, [], own_texts=qdata.own_texts), list(inputs), inputs,
                                      samples=min(_SENSITIVITY_SAMPLES, len(sens_texts)))
            ranking = onnx_sensitivity(quantizer.prepared, candidates, sens_feeds, mode=plan.mode,
                                       per_channel=quantizer.per_channel, reduce_range=quantizer.reduce_range,
                                       block_size=quantizer.block_size)
            trials: dict[int, Any] = {}

            def trial(extra: list[str]) -> float:
                path = Path(tmp) / f"trial-{len(extra)}" / Path(rel).name
                trials[len(extra)] = quantizer.quantize(path, exclude=list(config.exclude) + extra)
                return evaluator.file(path, "onnxruntime", src.name, static_shapes=src.static_shapes)["metric"]

            fallback = search_fallback([r["node"] for r in ranking], trial, baseline=fp32_eval["metric"],
                                       tolerance=float(config.tolerance),
                                       limit=int(config.max_fallback * len(candidates)), label=name)
            fallback.ranking = ranking
            result = trials[len(fallback.excluded)]
            for f in [result.path, result.path.with_name(result.path.name + ".data")]:
                if f.exists():
                    shutil.move(str(f), str(folder / Path(rel).parent / f.name))
    files = [rel] + ([rel + ".data"] if (folder / (rel + ".data")).exists() else [])
    settings = dict(result.settings)
    settings["requested_mode"] = plan.requested
    if fallback is not None:
        settings["accuracy_control"] = {"tool": "edgellm sensitivity ranking + nodes_to_exclude", **fallback.describe()}
    return ModelEntry(
        name=name, path=rel, backend="onnxruntime", precision="int8", files=files, target=src.target,
        static_shapes=src.static_shapes, quantization=settings,
        metrics={"ops": {k: v for k, v in sorted(result.ops.items()) if k in _REPORTED_OPS}},
    )


_REPORTED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "QAttention", "QEmbedLayerNormalization", "QuantizeLinear",
                 "DequantizeLinear", "MatMulNBits", "MatMul", "Attention", "FakeQuantize", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "Gather", "EmbedLayerNormalization"}


def _quantize_ov(folder: Path, manifest: Manifest, plan: _Plan, config: QuantizeConfig, qdata: QuantData,
                 evaluator: _Evaluator, fp32_eval: dict[str, Any], suffix: str) -> ModelEntry:
    from edgellm.quantize.openvino import quantize_openvino

    src = plan.source
    name = int8_name(src.name) + suffix
    rel = _twin_path(src.path, "int8" + suffix)
    calib = None
    validation = validation_fn = max_drop = None
    if plan.mode == "static":
        import openvino as ov

        model = ov.Core().read_model(str(folder / src.path))
        names = [p.get_any_name() for p in model.inputs]
        types = {p.get_any_name(): np.dtype(p.get_element_type().to_dtype()) for p in model.inputs}
        calib = _calibration(folder, manifest, plan, config, qdata, names, types)
        if config.tolerance is not None:
            validation, validation_fn = _nncf_validation(folder, manifest, plan, qdata, names, types, evaluator, src)
            max_drop = float(config.tolerance)
    elif config.tolerance is not None:
        log.info("%s: weight-only INT8 has no accuracy control in NNCF; it is evaluated and checked afterwards", name)
    result = quantize_openvino(folder / src.path, folder / rel, mode=plan.mode, preset=plan.preset,
                               calibration=calib, calibration_method=config.calibration_method,
                               exclude=config.exclude, validation=validation, validation_fn=validation_fn,
                               max_drop=max_drop)
    settings = dict(result.settings)
    settings["requested_mode"] = plan.requested
    if plan.requested != plan.mode:
        settings["note"] = "OpenVINO IR has no dynamic-activation INT8 format; NNCF static INT8 was made instead"
    return ModelEntry(
        name=name, path=rel, backend="openvino", precision="int8",
        files=[Path(rel).as_posix(), Path(rel).with_suffix(".bin").as_posix()], target=src.target,
        static_shapes=src.static_shapes, inference_precision=result.inference_precision, quantization=settings,
        metrics={"ops": {k: v for k, v in sorted(result.ops.items()) if k in _REPORTED_OPS},
                 "calibration_fed": result.calibration_fed},
    )


def _nncf_validation(folder: Path, manifest: Manifest, plan: _Plan, qdata: QuantData, names: list[str],
                     types: dict[str, Any], evaluator: _Evaluator, src: ModelEntry) -> tuple[list[Any], Any]:
    """Validation items (feed, label) and the metric function NNCF's accuracy control calls."""
    feeds = _calibration(folder, manifest, plan, QuantizeConfig(),
                         QuantData(qdata.validation, [], own_texts=qdata.own_texts), names, types,
                         samples=len(qdata.validation))
    if manifest.task == "text-classification":
        items = list(zip(feeds, qdata.labels or []))

        def metric(compiled: Any, batch: Sequence[Any]) -> tuple[float, list[float]]:
            request = compiled.create_infer_request()
            hits = []
            for feed, label in batch:
                logits = next(iter(request.infer(feed).values()))
                hits.append(100.0 if int(np.argmax(logits[0])) == int(label) else 0.0)
            return float(np.mean(hits)), hits

        return items, metric
    ref = evaluator._reference.get(src.name)
    if ref is None:
        raise QuantizationError("internal: no FP32 reference embeddings for accuracy control")
    items = list(zip(feeds, ref))

    def cosine(compiled: Any, batch: Sequence[Any]) -> tuple[float, list[float]]:
        request = compiled.create_infer_request()
        values = []
        for feed, want in batch:
            hidden = next(iter(request.infer(feed).values()))[0]
            mask = feed["attention_mask"][0].astype(np.float32)[:, None]
            pooled = (hidden * mask).sum(0) / max(float(mask.sum()), 1e-9) if manifest.pooling != "cls" else hidden[0]
            values.append(100.0 * float(pooled @ want / max(np.linalg.norm(pooled) * np.linalg.norm(want), 1e-12)))
        return float(np.mean(values)), values

    return items, cosine


def _fp16_entries(folder: Path, manifest: Manifest, config: QuantizeConfig, evaluator: _Evaluator) -> list[ModelEntry]:
    from edgellm.quantize.openvino import openvino_fp16

    out = []
    for src in [m for m in manifest.models if m.backend == "openvino" and m.precision == "fp32"]:
        rel = _twin_path(src.path, "fp16")
        openvino_fp16(folder / src.path, folder / rel)
        preset = get_preset(config.preset or detect_preset())
        entry = ModelEntry(name=int8_name(src.name, "fp16"), path=rel, backend="openvino", precision="fp16",
                           files=[rel, Path(rel).with_suffix(".bin").as_posix()], target=src.target,
                           static_shapes=src.static_shapes,
                           inference_precision=src.inference_precision or preset.inference_precision,
                           quantization={"tool": "openvino", "mode": "fp16 weights", "preset": preset.key})
        manifest.models = [m for m in manifest.models if m.name != entry.name] + [entry]
        write_manifest(folder, manifest)
        fp32 = src.metrics.get("validation") or evaluator.entry(folder, src.name)
        ev = evaluator.entry(folder, entry.name, reference=src.name)
        entry.metrics.update({"validation": ev, "metric_fp32": fp32["metric"], "drop": fp32["metric"] - ev["metric"],
                              "size_bytes": _size(folder, entry.files),
                              "size_vs_fp32": _size(folder, entry.files) / max(_size(folder, src.files), 1)})
        out.append(entry)
    return out


def resolve_data(data: Any, manifest: Manifest) -> Any:
    """QuantData / TaskData pass through; a DataConfig, a built-in data set name or a file path is loaded with
    `edgellm.data.load_task_data`; None means the data the artifact records it was trained on."""
    if isinstance(data, QuantData) or all(hasattr(data, k) for k in ("train", "validation", "labels")):
        return data
    from edgellm.data import BUILTIN_NAMES, load_task_data
    from edgellm.recipe import DataConfig, SplitConfig

    if isinstance(data, DataConfig):
        config = data
    elif isinstance(data, (str, Path)):
        text = str(data)
        config = DataConfig(name=text) if text in BUILTIN_NAMES else DataConfig(path=text)
        if text not in BUILTIN_NAMES and not Path(text).exists():
            raise DataError(f"data {text!r} is neither a built-in data set ({', '.join(BUILTIN_NAMES)}) nor a file")
    elif data is None:
        recorded = manifest.data or {}
        source = recorded.get("source") or {}
        split = recorded.get("split") or {}
        if source.get("kind") == "builtin" and source.get("name"):
            config = DataConfig(name=source["name"])
        elif source.get("kind") == "file" and source.get("path"):
            config = DataConfig(path=source["path"])
        else:
            raise DataError("the artifact does not record a data set it can reload; give the task's data "
                            "(a built-in name such as movie-reviews, a CSV / JSONL file, or a DataConfig)")
        if split:
            config.split = SplitConfig(validation=float(split.get("validation_fraction", config.split.validation)),
                                       test=float(split.get("test_fraction", config.split.test)),
                                       seed=int(split.get("seed", config.split.seed)))
    else:
        raise DataError(f"quantize data must be QuantData, TaskData, DataConfig, a data set name or path, "
                        f"not {type(data).__name__}")
    return load_task_data(config, task=manifest.task)


def _recorded_data(data: Any, manifest: Manifest) -> bool:
    """Whether `data` (TaskData) is the data set the artifact records: the same built-in / dataset name, the same
    file bytes (sha256) or the same dataset folder."""
    recorded = (manifest.data or {}).get("source") or {}
    given = getattr(data, "source", None)
    if not recorded or not isinstance(given, dict):
        return False

    def key(source: dict[str, Any]) -> tuple[Any, ...]:
        folder = source.get("path") if source.get("kind") == "hf" else None
        return source.get("kind"), source.get("name"), source.get("sha256"), folder

    return key(given) == key(recorded) and any(key(given)[1:])


def quantize(
    artifact: str | Path,
    output: str | Path | None = None,
    *,
    config: QuantizeConfig | None = None,
    data: QuantData | Any = None,
    overwrite: bool = False,
    threads: int | None = None,
) -> Manifest:
    """Quantize an FP32 artifact folder into `output` (or in place when `output` is None and `overwrite`).

    `data`: QuantData, edgellm.data.TaskData, a DataConfig, a built-in data set name or a file (calibration from its
    training split, evaluation on its validation split); None = the data set the artifact records. The task's own
    texts (None, or the recorded data set given again) are calibrated on whatever their unknown-token rate (the
    manifest records it); other data that the tokenizer mostly cannot read is refused as another language or task.
    The result is written atomically (edgellm.artifact.staging): on any error nothing is left at `output` and an
    existing artifact there is untouched.
    """
    src = Path(artifact)
    manifest = verify_artifact(src)
    config = config or QuantizeConfig()
    if config.mode == "none":
        raise ConfigError("quantize mode is 'none': there is nothing to do; choose dynamic, static or weight-only")
    out = Path(output) if output is not None else src
    if out.resolve() == src.resolve() and not overwrite:
        raise OutputExistsError(f"quantizing {str(src)!r} in place replaces it: pass overwrite=True (--overwrite), "
                                "or give another output folder")
    check_output(out, overwrite=overwrite)
    if config.tolerance is not None:
        check_tolerance(config.tolerance)
    _plans(manifest, config)  # refuse bad backends / presets / modes before loading any data
    own_texts = data is None
    data = resolve_data(data, manifest)
    own_texts = own_texts or _recorded_data(data, manifest)
    with staging(out, overwrite=overwrite) as stage:
        for rel in sorted(manifest.files):
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, target)
        if not manifest.files:
            raise ArtifactError(f"{src} lists no files in its manifest: it was not written by edgellm")
        quantize_models(stage, manifest, config=config, data=data, threads=threads, own_texts=own_texts)
        write_manifest(stage, manifest)
    return manifest
