"""Text-generation peers: llama.cpp, onnxruntime-genai and openvino-genai, measured like edgellm's own generators.

Every peer has the shape of `TorchGenerator` (`edgellm.bench.generation`): `name`, `format`, `size_bytes`, `info`,
`stream(prompt_ids, max_new_tokens)` (greedy, exactly that many tokens: end-of-sequence is masked, as in
`TorchGenerator`), `score(ids)` (natural-log probabilities of ids[1:], shape (T-1,)) and `close()`. So the same
`measure_generation` and `perplexity` time and score them, on the same prompt token ids and thread count.

    items = prepare_peers("embedded:SmolLM2-135M-Instruct")      # builds / finds each peer's files
    rows = measure_peers(items, threads=2, prompt_ids=ids, max_new_tokens=128, heldout=passages)

Each peer's files are made from the teacher by the benchmark, never downloaded:
- llama.cpp (llama-cpp-python, `make peers`): Q8_0 / Q4_0 GGUF files re-quantized from the shipped GGUF with
  `llama_model_quantize` (allow_requantize).
- onnxruntime-genai: its model builder, run in a separate venv (it needs transformers 5, which our pins exclude;
  `ortgenai_builder_python`) on the teacher's Hugging Face folder; the model then runs in edgellm's own venv.
- openvino-genai: `optimum-cli export openvino` (optimum-intel) on the same folder, then `LLMPipeline`.

A peer that cannot be installed, built or opened is a `Missing` record whose reason says what failed (the import
error, the last lines of a failed build), never skipped. By default each peer runs in its own Python process
(`PeerProcess`): its peak resident memory is its own, and an engine that crashes (llama.cpp built for the wrong
CPU) fails its row instead of the benchmark.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, Union

import numpy as np

from edgellm import errors as _errors
from edgellm.errors import BackendError, ConfigError, EdgeLLMError, GenerationError, InputError, ModelError
from edgellm.runtime.generate import token_log_probs

__all__ = [
    "ENGINES",
    "ORTGENAI_BUILDER_REQUIREMENTS",
    "Peer",
    "PeerSpec",
    "Missing",
    "LlamaCppPeer",
    "OrtGenAIPeer",
    "OpenVINOGenAIPeer",
    "PeerProcess",
    "open_peer",
    "llama_cpp_quantize",
    "ortgenai_builder_python",
    "ortgenai_build",
    "openvino_export",
    "prepare_peers",
    "open_peers",
    "available_peers",
    "measure_peers",
    "peer_label",
]

log = logging.getLogger(__name__)

LLAMA_CPP = "llama.cpp"
ORTGENAI = "onnxruntime-genai"
OPENVINO_GENAI = "openvino-genai"
ENGINES = (LLAMA_CPP, ORTGENAI, OPENVINO_GENAI)
_MODULES = {LLAMA_CPP: "llama_cpp", ORTGENAI: "onnxruntime_genai", OPENVINO_GENAI: "openvino_genai"}
_INSTALL = "make peers (pip install -e '.[peers]' with the CMAKE_ARGS of the Makefile)"

# The onnxruntime-genai model builder's own venv: it imports transformers 5 models (Qwen3.5 ...) at start-up.
ORTGENAI_BUILDER_REQUIREMENTS = (
    "onnxruntime-genai==0.18.0",
    "onnx-ir==1.1.0",
    "onnx==1.23.2",
    "transformers==5.23.0",
    "torch==2.13.0",  # the CPU wheel on local disk; an unpinned torch pulls a multi-GB CUDA build
)
_BUILD_RECORD = "edgellm-peer.json"  # written into every peer folder / beside every GGUF the benchmark makes
_TAIL_LINES = 15


class Peer(Protocol):
    """What `measure_peers` needs of an engine (`TorchGenerator` has the same shape)."""

    name: str
    format: str
    size_bytes: int
    info: dict[str, Any]

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]: ...

    def score(self, ids: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PeerSpec:
    """One peer model on disk: which engine opens it, the file or folder, and its format label."""

    engine: str  # one of ENGINES
    path: str  # a .gguf file (llama.cpp) or a model folder
    format: str  # "Q8_0", "int4", ...

    @property
    def label(self) -> str:
        return f"{self.engine} {self.format}"

    @property
    def size_bytes(self) -> int:
        """Bytes of its file, or of every file in its folder."""
        path = Path(self.path)
        return path.stat().st_size if path.is_file() else _folder_bytes(path, ("**/*",))


@dataclass(frozen=True)
class Missing:
    """A peer that could not be installed, built or opened; `reason` says exactly what failed."""

    name: str
    format: str
    reason: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.format}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "missing": True, "reason": self.reason}


# ---------------------------------------------------------------------------------------------------------------
# shared checks


def _check_prompt(prompt_ids: Sequence[int], max_new_tokens: int, vocab: int) -> list[int]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, not {max_new_tokens!r}")
    ids = _check_ids(prompt_ids, vocab, what="prompt_ids")
    if not ids:
        raise InputError("prompt_ids is empty: give at least one token id")
    return ids


def _check_ids(ids: Sequence[int], vocab: int, *, what: str) -> list[int]:
    out = [int(i) for i in ids]
    bad = [i for i in out if not 0 <= i < vocab]
    if bad:
        raise InputError(f"{what} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
    return out


def _check_score_ids(ids: Sequence[int], vocab: int) -> list[int]:
    out = _check_ids(ids, vocab, what="ids")
    if len(out) < 2:
        raise InputError(f"score needs at least 2 token ids (it predicts ids[1:]), got {len(out)}")
    return out


def _check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, not {threads!r}")
    return int(threads)


def _greedy(logits: np.ndarray, eos: Sequence[int]) -> int:
    """argmax with the end-of-sequence ids masked (TorchGenerator's min_new_tokens does the same)."""
    token = int(np.argmax(logits))
    if token in eos:
        masked = np.array(logits, dtype=np.float32, copy=True)
        masked[list(eos)] = -np.inf
        token = int(np.argmax(masked))
    return token


def _folder_bytes(folder: Path, patterns: Sequence[str]) -> int:
    """Total size of the files matching any of `patterns` (each file counted once)."""
    files = {p for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    return sum(p.stat().st_size for p in files)


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _import(engine: str) -> Any:
    """The engine's Python module, or BackendError naming the import error and how to install it."""
    import importlib

    try:
        return importlib.import_module(_MODULES[engine])
    except ImportError as exc:
        raise BackendError(f"{engine}: cannot import {_MODULES[engine]} ({exc}); install: {_INSTALL}") from exc


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp


def _ftype_names(llama_cpp: Any) -> dict[int, str]:
    names: dict[int, str] = {}
    for key, value in vars(llama_cpp).items():
        if key.startswith(("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")) and isinstance(value, int):
            names.setdefault(value, key.split("_", 3)[3])
    return names


class LlamaCppPeer:
    """A GGUF file in llama.cpp (llama-cpp-python): greedy decoding from the last position's logits through the
    low-level API, scoring through a second context with `logits_all=True` (opened on the first `score`)."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int, n_ctx: int = 2048, name: str = LLAMA_CPP,
                 format: str | None = None) -> None:
        src = Path(path)
        if not src.is_file() or src.suffix != ".gguf":
            raise ModelError(f"{str(src)!r} is not a .gguf file")
        self._threads = _check_threads(threads)
        self._lib = _import(LLAMA_CPP)
        self.path = src
        self._llm = self._open(logits_all=False, n_ctx=int(n_ctx))
        self.n_ctx = int(self._llm.n_ctx())  # llama.cpp rounds the context up (to 256 at least)
        self._scorer: Any = None
        self.vocab_size = int(self._llm.n_vocab())
        self._eos = sorted({int(self._llm.token_eos())} - {-1})
        ftype = int(self._lib.llama_model_ftype(self._llm.model))
        self.name = name
        self.format = format or _ftype_names(self._lib).get(ftype, f"ftype {ftype}")
        self.size_bytes = src.stat().st_size
        system = self._lib.llama_print_system_info()
        self.info: dict[str, Any] = {
            "backend": LLAMA_CPP, "version": getattr(self._lib, "__version__", "?"), "threads": self._threads,
            "path": str(src), "n_ctx": self.n_ctx, "ftype": ftype,
            "system_info": system.decode(errors="replace").strip() if isinstance(system, bytes) else str(system),
        }

    def _open(self, *, logits_all: bool, n_ctx: int) -> Any:
        try:
            return self._lib.Llama(model_path=str(self.path), n_ctx=n_ctx, n_batch=min(n_ctx, 512),
                                   n_threads=self._threads, n_threads_batch=self._threads, logits_all=logits_all,
                                   verbose=False)
        except Exception as exc:  # llama-cpp-python raises ValueError / RuntimeError with llama.cpp's reason
            raise BackendError(f"llama.cpp cannot load {self.path.name}: {exc}") from exc

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        """Greedy tokens after `prompt_ids`, exactly `max_new_tokens` of them (end-of-sequence masked)."""
        ids = _check_prompt(prompt_ids, max_new_tokens, self.vocab_size)
        if len(ids) + max_new_tokens > self.n_ctx:
            raise GenerationError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed the context of "
                                  f"{self.n_ctx}; open the peer with a larger n_ctx")
        return self._stream(ids, int(max_new_tokens))

    def _stream(self, ids: list[int], max_new_tokens: int) -> Iterator[int]:
        llm, lib = self._llm, self._lib
        llm.reset()  # n_tokens = 0: the next eval clears the KV cache (no prompt reuse between runs)
        llm.eval(ids)
        for step in range(max_new_tokens):
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(llm.ctx, -1), shape=(self.vocab_size,))
            token = _greedy(logits, self._eos)
            yield token
            if step + 1 < max_new_tokens:
                llm.eval([token])

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t = 1 .. T-1 (natural log), shape (T-1,)."""
        tokens = _check_score_ids(ids, self.vocab_size)
        if self._scorer is None or self._scorer.n_ctx() < len(tokens):
            if self._scorer is not None:
                self._scorer.close()
            self._scorer = self._open(logits_all=True, n_ctx=max(512, len(tokens)))
        self._scorer.reset()
        self._scorer.eval(tokens)
        return token_log_probs(self._scorer.scores[: len(tokens) - 1], tokens[1:])

    def close(self) -> None:
        for llm in (self._scorer, self._llm):
            if llm is not None:
                llm.close()
        self._scorer = None


def llama_cpp_quantize(source: str | os.PathLike[str], output: str | os.PathLike[str], format: str, *,
                       threads: int = 0) -> Path:
    """Re-quantize a GGUF file to `format` ("Q8_0", "Q4_0", "F32", ... any llama.cpp file type) with
    `llama_model_quantize` (allow_requantize: the source may itself be quantized). Written atomically."""
    lib = _import(LLAMA_CPP)
    src, out = Path(source), Path(output)
    if not src.is_file():
        raise ModelError(f"{str(src)!r} is not a file")
    known = {name: value for value, name in _ftype_names(lib).items()}
    if format not in known:
        raise ConfigError(f"unknown llama.cpp file type {format!r}; known: {sorted(known)}")
    params = lib.llama_model_quantize_default_params()
    params.ftype = known[format]
    params.allow_requantize = True
    params.nthread = int(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        code = lib.llama_model_quantize(str(src).encode(), str(partial).encode(), params)
        if code != 0 or not partial.is_file():
            raise BackendError(f"llama_model_quantize({src.name} -> {format}) failed with code {code}")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# onnxruntime-genai


class OrtGenAIPeer:
    """A folder written by onnxruntime-genai's model builder: `Generator.append_tokens` + `generate_next_token`
    (greedy, `min_length` masks end-of-sequence), scores from the `logits` output after appending a whole passage."""

    def __init__(self, folder: str | os.PathLike[str], *, threads: int, name: str = ORTGENAI,
                 format: str | None = None) -> None:
        root = Path(folder)
        config_file = root / "genai_config.json"
        if not config_file.is_file():
            raise ModelError(f"{str(root)!r} is not an onnxruntime-genai model folder (no genai_config.json)")
        self._threads = _check_threads(threads)
        og = self._og = _import(ORTGENAI)
        genai = json.loads(config_file.read_text(encoding="utf-8"))
        model = genai.get("model", {})
        self.vocab_size = int(model.get("vocab_size") or 0)
        self.context_length = int(model.get("context_length") or 0)
        try:
            config = og.Config(str(root))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self._threads, "inter_op_num_threads": 1}}}}))
            self._model = og.Model(config)
        except Exception as exc:  # onnxruntime-genai raises RuntimeError with its reason
            raise BackendError(f"onnxruntime-genai cannot load {root}: {exc}") from exc
        record = _read_record(root)
        self.name = name
        self.format = format or str(record.get("format", "?"))
        self.size_bytes = _folder_bytes(root, ["*.onnx", "*.onnx.data", "*.onnx_data", "*.data"])
        self.info = {"backend": ORTGENAI, "version": getattr(og, "__version__", "?"), "threads": self._threads,
                     "path": str(root), "context_length": self.context_length, "build": record}

    def _generator(self, max_length: int, min_length: int) -> Any:
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(do_sample=False, max_length=max_length, min_length=min_length, batch_size=1)
        return self._og.Generator(self._model, params)

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        """Greedy tokens after `prompt_ids`, exactly `max_new_tokens` of them (end-of-sequence masked)."""
        ids = _check_prompt(prompt_ids, max_new_tokens, self.vocab_size)
        total = len(ids) + int(max_new_tokens)
        if self.context_length and total > self.context_length:
            raise GenerationError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed the model's context of "
                                  f"{self.context_length}")
        return self._stream(ids, int(max_new_tokens), total)

    def _stream(self, ids: list[int], max_new_tokens: int, total: int) -> Iterator[int]:
        generator = self._generator(total, total)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        for produced in range(max_new_tokens):
            if generator.is_done():
                raise BackendError(f"onnxruntime-genai stopped after {produced} of {max_new_tokens} new tokens")
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0])
        del generator

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t = 1 .. T-1 (natural log), shape (T-1,)."""
        tokens = _check_score_ids(ids, self.vocab_size)
        generator = self._generator(len(tokens) + 1, 0)
        generator.append_tokens(np.asarray([tokens], dtype=np.int32))
        logits = np.asarray(generator.get_output("logits"))  # (1, T, vocab)
        if logits.ndim != 3 or logits.shape[1] != len(tokens):
            raise BackendError(f"onnxruntime-genai returned logits of shape {logits.shape} for {len(tokens)} tokens; "
                               "this model keeps only the last position, so it cannot score a passage")
        return token_log_probs(logits[0, :-1], tokens[1:])

    def close(self) -> None:
        self._model = None


def ortgenai_builder_python(venv: str | os.PathLike[str] | None = None, *, timeout_s: float = 1800.0) -> Path:
    """The Python of the venv that runs onnxruntime-genai's model builder, created on first use with
    `ORTGENAI_BUILDER_REQUIREMENTS` (default ~/.cache/edgellm/peers/ortgenai-venv). A venv whose record names
    other requirements, or whose install did not finish, is made again."""
    from edgellm.data import cache_dir

    root = Path(venv) if venv is not None else cache_dir() / "peers" / "ortgenai-venv"
    python = root / "bin" / "python"
    record = root / ".edgellm-builder.json"
    wanted = {"requirements": list(ORTGENAI_BUILDER_REQUIREMENTS)}
    if record.is_file() and python.is_file():
        try:
            if json.loads(record.read_text(encoding="utf-8")) == wanted:
                return python
        except ValueError:
            pass
    if root.exists():
        if any(root.iterdir()) and not (root / "pyvenv.cfg").is_file():
            raise ConfigError(f"{root} exists and is not a venv; give another folder for the builder venv")
        shutil.rmtree(root)
    log.info("creating the onnxruntime-genai builder venv %s (%s)", root, " ".join(ORTGENAI_BUILDER_REQUIREMENTS))
    _run([sys.executable, "-m", "venv", str(root)], what="python -m venv", timeout_s=300)
    _run([str(python), "-m", "pip", "install", "--quiet", *ORTGENAI_BUILDER_REQUIREMENTS],
         what="pip install of the onnxruntime-genai builder venv", timeout_s=timeout_s)
    record.write_text(json.dumps(wanted), encoding="utf-8")
    return python


def ortgenai_build(hf_folder: str | os.PathLike[str], output: str | os.PathLike[str], *, precision: str,
                   threads: int, python: str | os.PathLike[str] | None = None, accuracy_level: int = 4,
                   timeout_s: float = 3600.0) -> Path:
    """Run onnxruntime-genai's model builder (`-p fp32|int8|int4 -e cpu`, MatMulNBits accuracy_level 4 for the
    weight-only formats) on a Hugging Face folder, in the builder venv (`python`, default
    `ortgenai_builder_python()`), and set `intra_op_num_threads` in the written genai_config.json."""
    if precision not in ("fp32", "int8", "int4"):
        raise ConfigError(f"precision must be fp32, int8 or int4, not {precision!r}")
    source = _hf_folder(hf_folder)
    threads = _check_threads(threads)
    exe = str(python) if python is not None else str(ortgenai_builder_python())
    from edgellm.artifact import atomic_folder

    what = "an onnxruntime-genai model folder"
    with atomic_folder(output, overwrite=True, owned=_is_peer_folder, what=what) as stage, \
            tempfile.TemporaryDirectory(prefix="edgellm-ortgenai-") as cache:
        command = [exe, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(stage),
                   "-p", precision, "-e", "cpu", "-c", cache]
        if precision != "fp32":
            command += ["--extra_options", f"accuracy_level={int(accuracy_level)}"]
        _run(command, what=f"onnxruntime-genai model builder ({precision})", timeout_s=timeout_s, cwd=cache)
        config_file = stage / "genai_config.json"
        if not config_file.is_file():
            raise BackendError(f"onnxruntime-genai model builder ({precision}) wrote no genai_config.json in {stage}")
        genai = json.loads(config_file.read_text(encoding="utf-8"))
        options = genai.setdefault("model", {}).setdefault("decoder", {}).setdefault("session_options", {})
        options["intra_op_num_threads"] = threads
        options["inter_op_num_threads"] = 1
        config_file.write_text(json.dumps(genai, indent=4), encoding="utf-8")
        recorded = [str(output) if a == str(stage) else "TEMP" if a == cache else a for a in command[1:]]
        _write_record(stage, engine=ORTGENAI, format=precision, source=source, command=recorded,
                      builder_python=exe)
    return Path(output)


# ---------------------------------------------------------------------------------------------------------------
# openvino-genai


class OpenVINOGenAIPeer:
    """An optimum-intel OpenVINO export in `openvino_genai.LLMPipeline` (greedy, `min_new_tokens` masks
    end-of-sequence, tokens from a streamer), scores from the same IR compiled by OpenVINO with the same
    properties (LLMPipeline returns no logits)."""

    def __init__(self, folder: str | os.PathLike[str], *, threads: int, name: str = OPENVINO_GENAI,
                 format: str | None = None) -> None:
        root = Path(folder)
        if not (root / "openvino_model.xml").is_file():
            raise ModelError(f"{str(root)!r} is not an OpenVINO model folder (no openvino_model.xml)")
        self._threads = _check_threads(threads)
        genai = self._genai = _import(OPENVINO_GENAI)
        hf_config = root / "config.json"
        config = json.loads(hf_config.read_text(encoding="utf-8")) if hf_config.is_file() else {}
        self.vocab_size = int(config.get("vocab_size") or 0)
        if not self.vocab_size:
            raise ModelError(f"{root} has no config.json with vocab_size")
        # The default CPU pipeline caches prompt prefixes across generate() calls: a repeated prompt would then
        # skip its prefill (first token in ~20 ms instead of ~150 ms for 128 tokens). Every run starts cold here.
        scheduler = genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        try:
            self._pipe = genai.LLMPipeline(str(root), "CPU", scheduler_config=scheduler,
                                           INFERENCE_NUM_THREADS=self._threads)
        except Exception as exc:  # openvino-genai raises RuntimeError with its reason
            raise BackendError(f"openvino-genai cannot load {root}: {exc}") from exc
        self._root = root
        self._request: Any = None
        self._last_metrics: dict[str, float] = {}
        record = _read_record(root)
        import openvino

        hint = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")  # bf16 on CPUs with AVX512_BF16
        precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.name = name
        self.format = format or str(record.get("format", "?"))
        self.size_bytes = _folder_bytes(root, ["openvino_model.xml", "openvino_model.bin"])
        self.info = {"backend": OPENVINO_GENAI, "version": getattr(genai, "__version__", "?"),
                     "threads": self._threads, "path": str(root), "inference_precision": precision,
                     "prefix_caching": False, "build": record}

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        """Greedy tokens after `prompt_ids`, exactly `max_new_tokens` of them (end-of-sequence masked)."""
        ids = _check_prompt(prompt_ids, max_new_tokens, self.vocab_size)
        return self._stream(ids, int(max_new_tokens))

    def _stream(self, ids: list[int], max_new_tokens: int) -> Iterator[int]:
        genai = self._genai
        import openvino

        tokens: queue.Queue[int | None] = queue.Queue()

        class _Tokens(genai.StreamerBase):  # type: ignore[name-defined, misc]
            def write(self, token: Any) -> Any:
                for t in (token if isinstance(token, (list, tuple)) else [token]):
                    tokens.put(int(t))
                return genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        config = genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.min_new_tokens = max_new_tokens
        config.do_sample = False
        inputs = genai.TokenizedInputs(openvino.Tensor(np.asarray([ids], dtype=np.int64)),
                                       openvino.Tensor(np.ones((1, len(ids)), dtype=np.int64)))
        failures: list[BaseException] = []
        streamer = _Tokens()

        def run() -> None:
            try:
                result = self._pipe.generate(inputs, config, streamer)
                metrics = result.perf_metrics
                self._last_metrics = {"ttft_ms": float(metrics.get_ttft().mean),
                                      "tpot_ms": float(metrics.get_tpot().mean)}
            except BaseException as exc:  # re-raised in the consumer's thread below
                failures.append(exc)
            finally:
                tokens.put(None)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        produced = 0
        while (token := tokens.get()) is not None:
            produced += 1
            yield token
        worker.join()
        if failures:
            raise BackendError(f"openvino-genai generate failed: {failures[0]}") from failures[0]
        if produced != max_new_tokens:
            raise BackendError(f"openvino-genai produced {produced} of {max_new_tokens} new tokens")
        self.info["engine_reported"] = dict(self._last_metrics)

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t = 1 .. T-1 (natural log), shape (T-1,), from the pipeline's IR compiled
        with the same CPU properties (the default inference precision included)."""
        tokens = _check_score_ids(ids, self.vocab_size)
        if self._request is None:
            import openvino

            try:
                compiled = openvino.Core().compile_model(str(self._root / "openvino_model.xml"), "CPU",
                                                         {"INFERENCE_NUM_THREADS": self._threads})
            except Exception as exc:  # OpenVINO raises RuntimeError with its reason
                raise BackendError(f"OpenVINO cannot compile {self._root / 'openvino_model.xml'}: {exc}") from exc
            self._request = compiled.create_infer_request()
        request = self._request
        request.reset_state()
        n = len(tokens)
        feeds = {"input_ids": np.asarray([tokens], dtype=np.int64), "attention_mask": np.ones((1, n), np.int64),
                 "position_ids": np.arange(n, dtype=np.int64)[None], "beam_idx": np.zeros(1, np.int32)}
        names = {name for port in request.model_inputs for name in port.get_names()}
        result = request.infer({k: v for k, v in feeds.items() if k in names})
        logits = np.asarray(result["logits"])  # (1, T, vocab)
        if logits.ndim != 3 or logits.shape[1] != n:
            raise BackendError(f"OpenVINO returned logits of shape {logits.shape} for {n} tokens")
        return token_log_probs(logits[0, :-1], tokens[1:])

    def close(self) -> None:
        self._pipe = None
        self._request = None


def openvino_export(hf_folder: str | os.PathLike[str], output: str | os.PathLike[str], *, weight_format: str,
                    group_size: int | None = 64, timeout_s: float = 3600.0) -> Path:
    """`optimum-cli export openvino --task text-generation-with-past --weight-format int8|int4` (optimum-intel,
    in this venv) on a Hugging Face folder. int4 takes `group_size` (its default 128 does not divide
    SmolLM2's hidden size 576)."""
    if weight_format not in ("fp32", "fp16", "int8", "int4"):
        raise ConfigError(f"weight_format must be fp32, fp16, int8 or int4, not {weight_format!r}")
    source = _hf_folder(hf_folder)
    from edgellm.artifact import atomic_folder

    with atomic_folder(output, overwrite=True, owned=_is_peer_folder, what="an openvino-genai model folder") as stage:
        command = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(source),
                   "--task", "text-generation-with-past", "--weight-format", weight_format]
        if weight_format == "int4" and group_size:
            command += ["--group-size", str(int(group_size))]
        _run(command + [str(stage)], what=f"optimum-cli export openvino ({weight_format})", timeout_s=timeout_s)
        if not (stage / "openvino_model.xml").is_file():
            raise BackendError(f"optimum-cli export openvino ({weight_format}) wrote no openvino_model.xml")
        _write_record(stage, engine=OPENVINO_GENAI, format=weight_format, source=source,
                      command=["optimum-cli", *command[3:], str(output)])
    return Path(output)


# ---------------------------------------------------------------------------------------------------------------
# subprocess helpers and build records


def _run(command: Sequence[str], *, what: str, timeout_s: float, cwd: str | None = None) -> str:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        raise BackendError(f"{what} timed out after {timeout_s:.0f} s: {_tail(output)}") from exc
    except OSError as exc:
        raise BackendError(f"{what} could not start: {exc}") from exc
    if done.returncode != 0:
        raise BackendError(f"{what} failed (exit status {done.returncode}):\n"
                           f"{_tail(done.stdout + chr(10) + done.stderr)}")
    return done.stdout


def _hf_folder(folder: str | os.PathLike[str]) -> Path:
    root = Path(folder).resolve()
    if not (root / "config.json").is_file():
        raise ModelError(f"{str(folder)!r} is not a Hugging Face model folder (no config.json)")
    return root


def _write_record(folder: Path, **fields: Any) -> None:
    fields["source"] = str(fields["source"])
    (folder / _BUILD_RECORD).write_text(json.dumps(fields, indent=2), encoding="utf-8")


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / _BUILD_RECORD
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _is_peer_folder(folder: Path) -> bool:
    return (folder / _BUILD_RECORD).is_file()


def _matches(record: dict[str, Any], **fields: Any) -> bool:
    return all(record.get(k) == (str(v) if k == "source" else v) for k, v in fields.items())


# ---------------------------------------------------------------------------------------------------------------
# one peer per process


_LOCAL = {LLAMA_CPP: LlamaCppPeer, ORTGENAI: OrtGenAIPeer, OPENVINO_GENAI: OpenVINOGenAIPeer}


def open_peer(spec: PeerSpec, *, threads: int, isolate: bool = True, timeout_s: float = 600.0) -> Any:
    """Open a peer: in its own process (`PeerProcess`, the default) or in this one."""
    if spec.engine not in _LOCAL:
        raise ConfigError(f"unknown peer engine {spec.engine!r}; known: {list(ENGINES)}")
    threads = _check_threads(threads)
    if isolate:
        return PeerProcess(spec, threads=threads, timeout_s=timeout_s)
    return _LOCAL[spec.engine](spec.path, threads=threads, name=spec.engine, format=spec.format)


def _error(reply: dict[str, Any], what: str) -> EdgeLLMError:
    kind = getattr(_errors, str(reply.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, EdgeLLMError)) or kind is _errors.ExportMismatchError:
        kind = BackendError
    return kind(f"{what}: {reply.get('error')}")


class PeerProcess:
    """A peer hosted by a fresh Python process (JSON lines over its stdin / stdout). Tokens are forwarded as the
    engine yields them, so per-token wall-clock timing in this process sees the engine's own pace (a pipe adds
    tens of microseconds). `peak_rss_bytes()` is the child's own high-water mark."""

    def __init__(self, spec: PeerSpec, *, threads: int, timeout_s: float = 600.0,
                 python: str | os.PathLike[str] | None = None) -> None:
        self.spec = spec
        self.timeout_s = float(timeout_s)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
        self._errors = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            [str(python or sys.executable), "-c", "from edgellm.bench.peers import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors, text=True, env=env)
        reply = self._call({"op": "open", "spec": dataclasses.asdict(spec), "threads": threads},
                           what=f"opening {spec.label}")
        self.name: str = reply["name"]
        self.format: str = reply["format"]
        self.size_bytes: int = int(reply["size_bytes"])
        self.info: dict[str, Any] = {**reply["info"], "process": "own", "pid": self._proc.pid}

    def _send(self, request: dict[str, Any]) -> None:
        if self._proc.stdin is None or self._proc.poll() is not None:
            raise self._died("sending a request")
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()

    def _read(self, what: str) -> dict[str, Any]:
        timer = threading.Timer(self.timeout_s, self._proc.kill)
        timer.start()
        try:
            line = self._proc.stdout.readline() if self._proc.stdout is not None else ""
        finally:
            timer.cancel()
        if not line:
            raise self._died(what)
        reply = json.loads(line)
        if "error" in reply:
            raise _error(reply, f"{self.spec.label}, {what}")
        return reply

    def _call(self, request: dict[str, Any], *, what: str) -> dict[str, Any]:
        self._send(request)
        return self._read(what)

    def _died(self, what: str) -> BackendError:
        code = self._proc.wait()
        self._errors.seek(0)
        tail = _tail(self._errors.read())
        killed = code in (-9, 137)
        reason = f"killed after {self.timeout_s:.0f} s without an answer" if killed else f"exit status {code}"
        return BackendError(f"the {self.spec.label} process died while {what} ({reason}): {tail}")

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
        self._send({"op": "stream", "prompt_ids": [int(i) for i in prompt_ids], "max_new_tokens": max_new_tokens})
        finished = False
        try:
            while "t" in (reply := self._read("generating")):
                yield int(reply["t"])
            finished = True
            self.info.update(reply.get("info", {}))  # what the engine reported about this run
        except EdgeLLMError:
            finished = True  # the child answered with an error (or died): nothing left to read
            raise
        finally:
            if not finished:  # the caller stopped early: read the rest, so the next answer is the next request's
                while "t" in self._read("finishing an abandoned stream"):
                    pass

    def score(self, ids: Sequence[int]) -> np.ndarray:
        reply = self._call({"op": "score", "ids": [int(i) for i in ids]}, what="scoring")
        return np.asarray(reply["logp"], dtype=np.float64)

    def peak_rss_bytes(self) -> int:
        return int(self._call({"op": "rss"}, what="reading its peak memory")["peak_rss_bytes"])

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._call({"op": "close"}, what="closing")
            except BackendError as exc:
                log.warning("%s", exc)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._errors.close()


def _serve() -> None:
    """Entry of a peer process: one peer, requests as JSON lines on stdin, answers on the original stdout.
    Anything the engines print goes to stderr (stdout is the protocol)."""
    from edgellm.bench.process import peak_rss_bytes

    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")

    peer: Any = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "open":
                spec = PeerSpec(**request["spec"])
                peer = open_peer(spec, threads=int(request["threads"]), isolate=False)
                send({"name": peer.name, "format": peer.format, "size_bytes": peer.size_bytes, "info": peer.info})
            elif op == "stream":
                for token in peer.stream(request["prompt_ids"], request["max_new_tokens"]):
                    send({"t": token})
                send({"end": True, "info": peer.info})
            elif op == "score":
                send({"logp": peer.score(request["ids"]).tolist()})
            elif op == "rss":
                send({"peak_rss_bytes": peak_rss_bytes()})
            elif op == "close":
                if peer is not None:
                    peer.close()
                send({"closed": True})
                return
            else:
                send({"error": f"unknown request {op!r}", "type": "ConfigError"})
        except Exception as exc:  # answered to the parent, which raises the same typed error
            send({"error": str(exc) or type(exc).__name__, "type": type(exc).__name__})
            if op == "open":
                return


# ---------------------------------------------------------------------------------------------------------------
# the peer set


def prepare_peers(teacher: str = "embedded:SmolLM2-135M-Instruct", *, work_dir: str | os.PathLike[str] | None = None,
                  engines: Sequence[str] = ENGINES, llama_formats: Sequence[str] = ("Q8_0", "Q4_0"),
                  ortgenai_precisions: Sequence[str] = ("int8", "int4"),
                  openvino_formats: Sequence[str] = ("int8", "int4"), threads: int = 2,
                  builder_venv: str | os.PathLike[str] | None = None,
                  rebuild: bool = False) -> list[PeerSpec | Missing]:
    """Find or build every peer's files from `teacher` (a GGUF file or an embedded alias naming one; its
    Hugging Face folder comes from `causal_lm_folder`). Files go to `work_dir` (default
    ~/.cache/edgellm/peers) and are reused while their record names the same source. One entry per peer and
    format: a `PeerSpec` ready to open, or a `Missing` with the reason (an engine not installed, a failed build)."""
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown peer engines {unknown}; known: {list(ENGINES)}")
    threads = _check_threads(threads)
    from edgellm.data import cache_dir
    from edgellm.models import causal_lm_folder, resolve_model

    root = Path(work_dir) if work_dir is not None else cache_dir() / "peers"
    gguf = resolve_model(teacher)
    out: list[PeerSpec | Missing] = []
    folder_of: dict[str, Path | str] = {}

    def hf_folder() -> Path | str:
        """The teacher's Hugging Face folder (made once, on first need), or why there is none."""
        if "teacher" not in folder_of:
            try:
                folder_of["teacher"] = Path(causal_lm_folder(teacher))
            except EdgeLLMError as exc:
                folder_of["teacher"] = f"no Hugging Face folder of {teacher}: {exc}"
        return folder_of["teacher"]

    if LLAMA_CPP in engines:
        for fmt in llama_formats:
            out.append(_prepare_gguf(gguf, root / LLAMA_CPP, fmt, rebuild=rebuild))
    if ORTGENAI in engines:
        python: Path | None = None
        reason = _missing_module(ORTGENAI)
        hf = None if reason else hf_folder()
        if isinstance(hf, str):
            reason, hf = hf, None
        if not reason:
            try:
                python = ortgenai_builder_python(builder_venv)
            except EdgeLLMError as exc:
                reason = f"the model builder venv could not be made: {exc}"
        for precision in ortgenai_precisions:
            if reason or hf is None or python is None:
                out.append(Missing(ORTGENAI, precision, reason))
                continue
            folder = root / ORTGENAI / precision
            if rebuild or not _matches(_read_record(folder), engine=ORTGENAI, format=precision, source=hf):
                try:
                    ortgenai_build(hf, folder, precision=precision, threads=threads, python=python)
                except EdgeLLMError as exc:
                    out.append(Missing(ORTGENAI, precision, str(exc)))
                    continue
            out.append(PeerSpec(ORTGENAI, str(folder), precision))
    if OPENVINO_GENAI in engines:
        reason = _missing_module(OPENVINO_GENAI)
        hf = None if reason else hf_folder()
        if isinstance(hf, str):
            reason, hf = hf, None
        for fmt in openvino_formats:
            if reason or hf is None:
                out.append(Missing(OPENVINO_GENAI, fmt, reason))
                continue
            folder = root / OPENVINO_GENAI / fmt
            if rebuild or not _matches(_read_record(folder), engine=OPENVINO_GENAI, format=fmt, source=hf):
                try:
                    openvino_export(hf, folder, weight_format=fmt)
                except EdgeLLMError as exc:
                    out.append(Missing(OPENVINO_GENAI, fmt, str(exc)))
                    continue
            out.append(PeerSpec(OPENVINO_GENAI, str(folder), fmt))
    return out


def _missing_module(engine: str) -> str:
    module = _MODULES[engine]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as exc:
        return f"{engine}: cannot look up {module} ({exc}); install: {_INSTALL}"
    return "" if found else f"{engine}: No module named {module!r}; install: {_INSTALL}"


def _prepare_gguf(gguf: str, folder: Path, fmt: str, *, rebuild: bool) -> PeerSpec | Missing:
    reason = _missing_module(LLAMA_CPP)
    if reason:
        return Missing(LLAMA_CPP, fmt, reason)
    source = Path(gguf)
    if source.suffix != ".gguf":
        return Missing(LLAMA_CPP, fmt, f"the teacher {gguf} is not a GGUF file; llama.cpp peers are re-quantized "
                                       "from the teacher's GGUF")
    target = folder / f"{source.stem.split('.')[0]}.{fmt}.gguf"
    record_file = target.with_name(target.name + ".json")
    try:
        record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    except ValueError:
        record = {}
    if rebuild or not target.is_file() or not _matches(record, engine=LLAMA_CPP, format=fmt, source=source):
        # in a child process: a llama.cpp built for another CPU dies there (SIGILL), not in the benchmark
        code = ("import sys; from edgellm.bench.peers import llama_cpp_quantize; "
                "llama_cpp_quantize(sys.argv[1], sys.argv[2], sys.argv[3])")
        try:
            _run([sys.executable, "-c", code, str(source), str(target), fmt], what=f"llama_model_quantize to {fmt}",
                 timeout_s=600)
        except EdgeLLMError as exc:
            return Missing(LLAMA_CPP, fmt, str(exc))
        record_file.write_text(json.dumps({"engine": LLAMA_CPP, "format": fmt, "source": str(source)}), "utf-8")
    return PeerSpec(LLAMA_CPP, str(target), fmt)


PeerItem = Union[PeerSpec, Missing, Any]


def open_peers(items: Sequence[PeerItem], *, threads: int, isolate: bool = True) -> list[Any]:
    """Each `PeerSpec` of `items` opened (`open_peer`), or a `Missing` naming why it could not be; other items as
    they are. Every opened peer holds its model in memory until `close()`."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, PeerSpec):
            try:
                item = open_peer(item, threads=threads, isolate=isolate)
            except EdgeLLMError as exc:
                item = Missing(item.engine, item.format, str(exc))
        out.append(item)
    return out


def available_peers(teacher: str = "embedded:SmolLM2-135M-Instruct", *, threads: int, isolate: bool = True,
                    **prepare: Any) -> list[Any]:
    """`prepare_peers`, then `open_peers`: a ready peer object, or a `Missing` naming what failed.
    `measure_peers` on `prepare_peers`'s list opens one at a time instead."""
    return open_peers(prepare_peers(teacher, threads=threads, **prepare), threads=threads, isolate=isolate)


def peer_label(peer: Any) -> str:
    """"ENGINE FORMAT" of an opened peer: its row's name in a benchmark, its key in `measure_peers`' `timed`."""
    return f"{peer.name} {peer.format}"


def measure_peers(items: Sequence[PeerItem], *, threads: int, prompt_ids: Sequence[int], max_new_tokens: int,
                  heldout: Sequence[Sequence[int]] = (), warmup: int = 1, repeat: int = 3,
                  isolate: bool = True, timed: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per peer: decode tokens/s and time to first token (`measure_generation`, the same prompt ids),
    perplexity on `heldout` token sequences (`perplexity`; None with `perplexity_error` when the engine cannot
    score), file size, peak resident memory after loading and generating (peers in their own process), and the
    greedy tokens of the last run. `PeerSpec`s are opened one at a time and closed after; `Missing` entries and
    peers that fail to open or to generate become rows with `missing: True` and the reason. `timed`: generation
    records already taken for opened peers (`peer_label` -> record, e.g. in a benchmark's alternating rounds),
    used instead of timing them again (one untimed generation gives their tokens)."""
    from edgellm.bench.generation import measure_generation, perplexity

    rows: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Missing):
            rows.append(item.to_dict())
            continue
        owned = isinstance(item, PeerSpec)
        try:
            peer = open_peer(item, threads=threads, isolate=isolate) if owned else item
        except EdgeLLMError as exc:
            rows.append(Missing(item.engine, item.format, str(exc)).to_dict())
            continue
        try:
            record = (timed or {}).get(peer_label(peer))
            measure = measure_generation if record is None else _reuse(record)
            rows.append(_measure_one(peer, prompt_ids=prompt_ids, max_new_tokens=max_new_tokens, heldout=heldout,
                                     warmup=warmup, repeat=repeat, measure=measure, score=perplexity))
        except EdgeLLMError as exc:
            rows.append(Missing(peer.name, peer.format, str(exc)).to_dict())
        finally:
            if owned:
                peer.close()
    return rows


def _reuse(record: dict[str, Any]) -> Any:
    """A `measure_generation` stand-in that runs the stream once, untimed (the row's tokens), and gives `record`."""
    def measure(stream: Any, prompt_ids: Sequence[int], *, max_new_tokens: int, **_: Any) -> dict[str, Any]:
        for _token in stream(prompt_ids, max_new_tokens):
            pass
        return record

    return measure


def _measure_one(peer: Any, *, prompt_ids: Sequence[int], max_new_tokens: int, heldout: Sequence[Sequence[int]],
                 warmup: int, repeat: int, measure: Any, score: Any) -> dict[str, Any]:
    last: list[int] = []

    def stream(prompt: Sequence[int], n: int) -> Iterator[int]:
        last.clear()
        for token in peer.stream(prompt, n):
            last.append(token)
            yield token

    generation = measure(stream, list(prompt_ids), max_new_tokens=max_new_tokens, warmup=warmup, repeat=repeat)
    row: dict[str, Any] = {
        "name": peer.name, "format": peer.format, "missing": False, "size_bytes": peer.size_bytes,
        "size_mb": peer.size_bytes / 1e6, "generation": generation,
        "decode_tokens_per_s": generation["decode_tokens_per_s"],
        "time_to_first_token_ms": generation["time_to_first_token_ms"], "tokens": list(last),
        "peak_rss_bytes": None, "perplexity": None, "perplexity_error": None,
    }
    if hasattr(peer, "peak_rss_bytes"):
        row["peak_rss_bytes"] = peer.peak_rss_bytes()
    if heldout:
        try:
            row["perplexity"] = score(peer.score, heldout)["perplexity"]
        except BackendError as exc:
            row["perplexity_error"] = str(exc)
    row["info"] = dict(peer.info)
    return row
