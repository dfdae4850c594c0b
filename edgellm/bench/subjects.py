"""What is measured: subjects (an engine + a model, JSON-serialisable) and runners (a loaded subject)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from edgellm.bench.machine import package_version
from edgellm.errors import ConfigError, ModelError
from edgellm.runtime.tasks import pool

__all__ = ["Subject", "artifact_subjects", "teacher_subject", "optimum_subject", "open_subject", "Runner",
           "pipeline_stage_models", "PIPELINE_STAGES"]

log = logging.getLogger(__name__)


@dataclass
class Subject:
    """One engine + model to measure; JSON-serialisable, so a fresh process can load it for the cold start."""

    name: str  # row label, unique in a run
    kind: Literal["edgellm", "pytorch", "optimum"]
    path: str  # artifact folder (edgellm), Hugging Face folder (pytorch), exported folder (optimum)
    task: str  # text-classification, feature-extraction or text-generation
    stage: str  # teacher, student, pruned, int8 ... (from the manifest when it says)
    backend: str  # onnxruntime, openvino, pytorch
    precision: str  # fp32, int8 ...
    size_bytes: int  # model files on disk (weights and graph; the tokenizer is not counted)
    max_length: int  # longest input (generators: the context), tokens
    model: str | None = None  # manifest model name (edgellm) or ONNX file name (optimum)
    labels: list[str] | None = None  # class names (text-classification)
    pooling: str | None = None  # mean / cls (feature-extraction, pytorch and optimum)
    normalize: bool = False  # L2-normalise embeddings (feature-extraction, pytorch and optimum)
    engine: str = ""  # human-readable engine and version
    note: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subject:
        return cls(**data)


def _entry_stage(entry: Any) -> str:
    """The stage column of a model entry: its own `metrics.stage`, else "export" (FP32) or its precision."""
    stage = entry.metrics.get("stage") if isinstance(entry.metrics, dict) else None
    if stage:
        return str(stage)
    return "export" if entry.precision == "fp32" and not entry.quantization else entry.precision


PIPELINE_STAGES = {"teacher": "teacher", "distill": "student", "prune": "pruned", "vocab": "vocab-trimmed"}


def pipeline_stage_models(artifact: str | os.PathLike[str], manifest: Any = None, *,
                          work_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The PyTorch models of the pipeline stages that built a compressed artifact (`edgellm compress`), found in
    its work folder (`work_dir`, default `<artifact>.work`) as `<stage>-<key>/model` from the stage keys its
    manifest records: {"teacher": fine-tuned teacher, "distill": student, "prune": pruned, "vocab":
    vocabulary-trimmed}."""
    from edgellm.artifact import read_manifest

    folder = Path(artifact)
    manifest = manifest or read_manifest(folder)
    work = Path(work_dir) if work_dir is not None else folder.with_name(folder.name + ".work")
    found: dict[str, Path] = {}
    for stage in PIPELINE_STAGES:
        key = (manifest.metrics.get(stage) or {}).get("key") if isinstance(manifest.metrics, dict) else None
        path = work / f"{stage}-{key}" / "model"
        if key and (path / "config.json").is_file():
            found[stage] = path
    return found


def artifact_subjects(artifact: str | os.PathLike[str], models: Sequence[str] | None = None, *,
                      prefix: str = "") -> list[Subject]:
    """One subject per model entry of the artifact (or per name in `models`), in manifest order."""
    from edgellm.artifact import read_manifest

    folder = Path(artifact)
    manifest = read_manifest(folder)
    entries = [manifest.model(name) for name in models] if models else list(manifest.models)
    out = []
    for entry in entries:
        engine = {"onnxruntime": f"ONNX Runtime {package_version('onnxruntime')}",
                  "openvino": f"OpenVINO {package_version('openvino')}"}[entry.backend]
        if entry.backend == "openvino":
            engine += f" ({entry.inference_precision or 'f32'} inference)"
        out.append(Subject(
            name=f"{prefix}{entry.name}",
            kind="edgellm",
            path=str(folder),
            task=manifest.task,
            stage=_entry_stage(entry),
            backend=entry.backend,
            precision=entry.precision,
            size_bytes=sum(int(manifest.files.get(f, {}).get("bytes", 0)) for f in entry.files),
            max_length=manifest.max_length,
            model=entry.name,
            labels=manifest.labels,
            pooling=manifest.pooling,
            normalize=manifest.normalize,
            engine=f"edgellm / {engine}",
        ))
    return out


def _weights_bytes(folder: Path) -> int:
    files = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth") and p.is_file()]
    return sum(p.stat().st_size for p in files)


def teacher_subject(teacher: str | os.PathLike[str], *, task: str, labels: Sequence[str] | None = None,
                    max_length: int = 128, pooling: str | None = None, normalize: bool = False,
                    stage: str = "teacher") -> Subject:
    """A model in FP32 PyTorch (transformers): the teacher, or with `stage` another pipeline stage's model (named
    STAGE-pytorch-fp32). A classifier must carry a trained head with `labels`; a causal LM may be a .gguf file
    (de-quantized to FP32 on load)."""
    from edgellm.models import resolve_model

    path = Path(resolve_model(teacher))
    if task == "text-generation" and path.suffix == ".gguf" and path.is_file():
        config: dict[str, Any] = {}
        size = path.stat().st_size
    elif path.is_dir() and (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        size = _weights_bytes(path)
    else:
        raise ModelError(f"teacher {str(teacher)!r} is not a local Hugging Face folder"
                         f"{' or .gguf file' if task == 'text-generation' else ''}; the benchmark needs one")
    if task == "text-generation" and config:
        archs = config.get("architectures") or []
        if not any(a.endswith("ForCausalLM") for a in archs):
            raise ModelError(f"teacher {str(teacher)!r} is not a causal LM (architectures {archs}); pass the "
                             "teacher's folder (--teacher PATH), or leave the baseline out (--no-baselines)")
    if task == "text-classification":
        archs = config.get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ModelError(
                f"teacher {str(teacher)!r} has no sequence-classification head (architectures {archs}); pass the "
                "fine-tuned teacher folder (--teacher PATH), or leave the baselines out (--no-baselines)"
            )
        count = len(config.get("id2label") or {}) or int(config.get("num_labels", 0))
        if labels and count != len(labels):
            raise ModelError(f"teacher {str(teacher)!r} has {count} labels; the artifact has {len(labels)} ({labels})")
    return Subject(
        name=f"{stage}-pytorch-fp32",
        kind="pytorch",
        path=str(path),
        task=task,
        stage=stage,
        backend="pytorch",
        precision="fp32",
        size_bytes=size,
        max_length=max_length,
        labels=list(labels) if labels else None,
        pooling=pooling or ("mean" if task == "feature-extraction" else None),
        normalize=normalize,
        engine=f"PyTorch {package_version('torch')} (transformers {package_version('transformers')})",
        note=str(teacher),
    )


def optimum_subject(teacher: Subject, workdir: str | os.PathLike[str]) -> Subject:
    """Optimum's baseline: export the teacher with `ORTModelFor*` and quantize it with `ORTQuantizer`
    (`AutoQuantizationConfig.avx512_vnni(is_static=False)`, dynamic INT8) into `workdir`."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    out = Path(workdir)
    start = time.perf_counter()
    ort_cls = _optimum_class(teacher.task)
    model = ort_cls.from_pretrained(teacher.path, export=True)
    model.save_pretrained(out)
    quantizer = ORTQuantizer.from_pretrained(model)
    quantizer.quantize(quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False), save_dir=out)
    _copy_tokenizer(Path(teacher.path), out)
    file_name = "model_quantized.onnx"
    size = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith(file_name))
    log.info("Optimum baseline exported and quantized in %.1f s", time.perf_counter() - start)
    return dataclasses.replace(
        teacher,
        name="optimum-ort-int8",
        kind="optimum",
        path=str(out),
        stage="baseline",
        backend="onnxruntime",
        precision="int8",
        size_bytes=size,
        model=file_name,
        engine=f"Optimum (optimum-onnx {package_version('optimum-onnx')}) ORTQuantizer avx512_vnni dynamic / "
               f"ONNX Runtime {package_version('onnxruntime')}",
        note=f"teacher {teacher.note} exported by ORTModel and quantized by ORTQuantizer",
    )


def _copy_tokenizer(src: Path, dst: Path) -> None:
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def _optimum_class(task: str) -> Any:
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTModelForSequenceClassification

    return ORTModelForSequenceClassification if task == "text-classification" else ORTModelForFeatureExtraction


# ---------------------------------------------------------------------------------------------------------------
# Runners: a loaded subject


class Runner:
    """A loaded subject. Encoders: `predict(texts, batch_size=None)` -> class probabilities (N, K) or embeddings
    (N, D), `batch_size` texts per inference call (None: the engine's default; edgellm's runtime runs one text per
    call where batching would change a text's result).
    Generators: `stream(prompt_ids, max_new_tokens)` -> token ids, `score(ids)` -> next-token log-probabilities."""

    tokenizer: Any  # tokenizers.Tokenizer used by the engine (the runtime's own, or transformers' backend one)
    info: dict[str, Any]

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _EdgeGenerator(Runner):
    """An artifact's Generator: greedy token stream (end-of-sequence ignored) and next-token log-probabilities."""

    def __init__(self, subject: Subject, threads: int) -> None:
        from edgellm.runtime import load

        self.model: Any = load(subject.path, model=subject.model, threads=threads)
        self.tokenizer = self.model.tokenizer
        self.info = self.model.describe()

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Any:
        return self.model.tokens(list(prompt_ids), max_new_tokens, temperature=0.0, ignore_eos=True)

    def score(self, ids: Sequence[int]) -> np.ndarray:
        return self.model.log_probs(list(ids))

    def close(self) -> None:
        del self.model


class _EdgeRunner(Runner):
    def __init__(self, subject: Subject, threads: int) -> None:
        from edgellm.runtime import load

        self.model: Any = load(subject.path, model=subject.model, threads=threads)
        self.tokenizer = self.model.encoder.tokenizer
        self.info = self.model.describe()
        self._fn = self.model.scores if subject.task == "text-classification" else self.model.embed

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return self._fn(texts, batch_size=batch_size)

    def close(self) -> None:
        del self.model, self._fn


class _HFRunner(Runner):
    """transformers' tokenizer + a PyTorch model or an Optimum ORTModel, batched like the runtime (sorted by length,
    `batch_size` texts per call, padded to the longest)."""

    def __init__(self, subject: Subject, threads: int, batch_size: int = 32) -> None:
        from transformers import AutoTokenizer

        self.subject = subject
        self.batch_size = batch_size
        self.hf_tokenizer = AutoTokenizer.from_pretrained(subject.path)
        self.tokenizer = self.hf_tokenizer.backend_tokenizer
        if subject.kind == "pytorch":
            import torch
            from transformers import AutoModel, AutoModelForSequenceClassification

            self._torch = torch
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
            if subject.task == "text-classification":
                self.model: Any = AutoModelForSequenceClassification.from_pretrained(subject.path, dtype=torch.float32)
            else:
                self.model = AutoModel.from_pretrained(subject.path, dtype=torch.float32, add_pooling_layer=False)
            self.model.eval()
            self._tensors = "pt"
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._torch = None
            self.model = _optimum_class(subject.task).from_pretrained(
                subject.path, file_name=subject.model, session_options=options)
            self._tensors = "np"
        self.info = {"backend": subject.backend, "threads": threads, "path": subject.path}

    def _batch(self, texts: list[str]) -> np.ndarray:
        enc = self.hf_tokenizer(texts, padding=True, truncation=True, max_length=self.subject.max_length,
                                return_tensors=self._tensors)
        if self._torch is not None:
            with self._torch.inference_mode():
                out = self.model(**enc)
            first = (out.logits if self.subject.task == "text-classification" else out.last_hidden_state).numpy()
            mask = enc["attention_mask"].numpy()
        else:
            out = self.model(**enc)
            first = out.logits if self.subject.task == "text-classification" else out.last_hidden_state
            first = np.asarray(first.numpy() if hasattr(first, "numpy") else first)
            mask = np.asarray(enc["attention_mask"])
        if self.subject.task == "text-classification":
            z = first.astype(np.float64) - first.max(axis=1, keepdims=True)
            e = np.exp(z)
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        pooled = pool(first, mask, "cls" if self.subject.pooling == "cls" else "mean")
        if self.subject.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[Any] = [None] * len(texts)
        step = batch_size or self.batch_size
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            for i, row in zip(idx, self._batch([texts[i] for i in idx])):
                rows[i] = row
        return np.stack(rows)

    def close(self) -> None:
        if self._torch is not None:
            self._torch.set_num_threads(self._threads_before)
        del self.model


def open_subject(subject: Subject, *, threads: int) -> Runner:
    """Load `subject` with `threads` intra-op threads (ORT / OpenVINO through `load(threads=)`, torch via
    `torch.set_num_threads`, Optimum via ORT session options)."""
    if subject.task == "text-generation":
        if subject.kind == "edgellm":
            return _EdgeGenerator(subject, threads)
        if subject.kind == "pytorch":
            from edgellm.bench.generation import TorchGenerator

            return TorchGenerator(subject.path, threads=threads)  # type: ignore[return-value]
        raise ConfigError(f"no {subject.kind} runner for text-generation")
    if subject.kind == "edgellm":
        return _EdgeRunner(subject, threads)
    if subject.kind in ("pytorch", "optimum"):
        return _HFRunner(subject, threads)
    raise ConfigError(f"unknown subject kind {subject.kind!r}; known: edgellm, pytorch, optimum")


