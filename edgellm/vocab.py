"""Vocabulary trimming: keep only the tokens a task's text uses, in the embedding matrix and in the tokenizer.

Half of MiniLM-L6's 22.7 M parameters are its 30,522 x 384 embedding table, and a task uses a small share of it.
`trim_vocabulary` keeps the special tokens, every token the given texts produce (at least `min_count` times), and
(by default) the single-character pieces `c` / `##c` of every character in those tokens; it renumbers them in
their original order, slices the embedding rows (and an untied output layer), and rewrites the WordPiece vocab,
the special-token ids of the post-processor, padding and added tokens in tokenizer.json to match.

Exactness: WordPiece splits a word greedily, longest vocabulary match first. The trimmed vocabulary is a subset of
the original, and it holds every piece the original split of a seen word used, so that split is still the longest
match at each step: a text made of words seen in `texts` (min_count=1) gets the same tokens, renumbered, and the
trimmed model gives exactly the same outputs. Other words split into kept pieces or characters, else into [UNK].

BPE (RoBERTa's and ModernBERT's byte-level BPE) and Unigram (XLM-R's and DeBERTa-v3's SentencePiece) are trimmed
too (`_choose_subword_tokens`): the seen tokens, the specials and, as fallback, every single-character token (the
byte alphabet of a byte-level BPE, `<0xNN>` byte tokens): a text the original could read never gains an unknown
token. BPE keeps every token a kept token is merged from (recursively) and only the merges whose two parts and
result are kept, in their order: a seen word's merges are all kept and still apply first, so it gets the same
tokens. Unigram keeps the pieces' scores (and the lowest-scoring piece, which sets the unknown penalty): a seen
text's best segmentation is still there and nothing better was added, so it is chosen again.

Other tokenizer models (WordLevel) raise ModelError naming their model type.

Vocabulary extension (`extend_vocabulary`, WordPiece only) is the mirror: the characters of a task's text that the vocabulary
lacks (so that the words holding them become [UNK]) are appended as new tokens, `c` where a word starts with the
character and `##c` inside a word, with new embedding rows for fine-tuning to learn. BERT's pre-tokenizer makes
every CJK character a word of its own, so for Chinese text each added character is one token where it was [UNK].
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgellm.errors import DataError, ModelError
from edgellm.runtime.text import plain_tokenizer

__all__ = ["TrimResult", "trim_vocabulary", "choose_tokens", "trim_tokenizer_json", "vocab_coverage",
           "SUPPORTED_MODELS", "check_trimmable", "unknown_rate", "unknown_tokens", "text_coverage",
           "UNKNOWN_WARN_RATE", "ExtendResult", "extend_vocabulary", "unknown_pieces", "extend_tokenizer_json"]

log = logging.getLogger(__name__)

SUPPORTED_MODELS = ("WordPiece", "BPE", "Unigram")  # trimming
EXTENDABLE_MODELS = ("WordPiece",)  # extension: characters become c / ##c pieces

# Above this share of unknown tokens in the task's text, the tokenizer's vocabulary does not cover its language or
# script: the pipeline warns when the data is read.
UNKNOWN_WARN_RATE = 0.05


@dataclass
class TrimResult:
    model: Any  # the same model object, its embeddings sliced
    tokenizer: Any  # a new fast tokenizer with the trimmed vocabulary
    keep_ids: list[int]  # original id of each new id (new id i was keep_ids[i])
    report: dict[str, Any]


def _backend_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return json.loads(backend.to_str())


def _check_model(data: dict[str, Any], supported: Sequence[str] = SUPPORTED_MODELS, what: str = "trimming",
                 remedy: str = "export without trim_vocab") -> dict[str, Any]:
    """The `model` section of tokenizer.json `data`; ModelError naming its type when `what` cannot handle it."""
    model = data.get("model") or {}
    kind = model.get("type")
    if kind not in supported:
        raise ModelError(f"vocabulary {what} supports {list(supported)} tokenizers, not {kind!r}: {remedy}")
    return model


def check_trimmable(tokenizer: Any) -> None:
    """ModelError naming the tokenizer model when its vocabulary cannot be trimmed (before any work)."""
    _check_model(_backend_json(tokenizer))


def _special_ids(data: dict[str, Any], tokenizer: Any) -> set[int]:
    vocab = _token_ids(data["model"])
    ids = {int(t["id"]) for t in data.get("added_tokens", [])}
    names = [data["model"].get("unk_token")]
    for attr in ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, str):
            names.append(value)
    ids |= {vocab[n] for n in names if n in vocab}
    return ids


def choose_tokens(tokenizer: Any, texts: Sequence[str], *, min_count: int = 1,
                  keep_characters: bool = True) -> tuple[list[int], Counter]:
    """Original ids to keep (sorted) and the token counts of `texts`."""
    data = _backend_json(tokenizer)
    model = _check_model(data)
    if not texts:
        raise DataError("vocabulary trimming needs the task's texts; got none")
    if not isinstance(min_count, int) or min_count < 1:
        raise DataError(f"min_count = {min_count!r} must be an integer >= 1")
    counts: Counter = Counter()
    for enc in plain_tokenizer(tokenizer).encode_batch([str(t) for t in texts], add_special_tokens=False):
        counts.update(enc.ids)
    if model["type"] != "WordPiece":
        return _choose_subword_tokens(model, _special_ids(data, tokenizer), counts, min_count, keep_characters), counts
    vocab: dict[str, int] = model["vocab"]
    prefix = model.get("continuing_subword_prefix", "##")
    keep = _special_ids(data, tokenizer)
    keep |= {i for i, c in counts.items() if c >= min_count}
    if keep_characters:
        id_to_token = {i: t for t, i in vocab.items()}
        chars = set()
        for i in list(keep):
            token = id_to_token.get(i, "")
            chars.update(token[len(prefix):] if token.startswith(prefix) else token)
        for ch in chars:
            for piece in (ch, prefix + ch):
                if piece in vocab:
                    keep.add(vocab[piece])
    return sorted(keep), counts


def trim_tokenizer_json(data: dict[str, Any], keep_ids: Sequence[int]) -> dict[str, Any]:
    """A copy of tokenizer.json `data` whose vocabulary holds `keep_ids` only, renumbered 0..n-1 in order."""
    model = _check_model(data)
    remap = {old: new for new, old in enumerate(keep_ids)}
    out = json.loads(json.dumps(data))
    if model["type"] == "WordPiece":
        id_to_token = {i: t for t, i in model["vocab"].items()}
        out["model"]["vocab"] = {id_to_token[old]: new for new, old in enumerate(keep_ids)}
    else:
        out["model"] = _trim_subword_model(model, keep_ids)
    unk = model.get("unk_token")
    if unk is not None and unk not in _token_ids(out["model"]):
        raise ModelError(f"the unknown token {unk!r} must be kept when trimming the vocabulary")

    def new_id(old: int, what: str) -> int:
        if int(old) not in remap:
            raise ModelError(f"{what} (id {old}) is not in the kept vocabulary")
        return remap[int(old)]

    for token in out.get("added_tokens", []):
        token["id"] = new_id(token["id"], f"added token {token.get('content')!r}")
    _remap_processor(out.get("post_processor"), new_id)
    padding = out.get("padding")
    if padding and padding.get("pad_id") is not None:
        padding["pad_id"] = new_id(padding["pad_id"], f"padding token {padding.get('pad_token')!r}")
    return out


def _remap_processor(proc: Any, new_id: Any) -> None:
    if not isinstance(proc, dict):
        return
    kind = proc.get("type")
    if kind == "TemplateProcessing":
        for name, spec in (proc.get("special_tokens") or {}).items():
            spec["ids"] = [new_id(i, f"special token {name!r}") for i in spec.get("ids", [])]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if key in proc:
                proc[key] = [proc[key][0], new_id(proc[key][1], f"special token {proc[key][0]!r}")]
    elif kind == "Sequence":
        for sub in proc.get("processors", []):
            _remap_processor(sub, new_id)


def vocab_coverage(tokenizer: Any, texts: Sequence[str]) -> dict[str, Any]:
    """Share of the tokens of `texts` (no special tokens) that are not the unknown token."""
    _check_model(_backend_json(tokenizer))
    counts = unknown_tokens(tokenizer, texts)
    total, unknown = counts["tokens"], counts["unknown"]
    return {"tokens": total, "unknown": unknown, "coverage": (total - unknown) / total if total else 1.0}


def unknown_tokens(tokenizer: Any, texts: Sequence[str]) -> dict[str, Any]:
    """How many of the tokens of `texts` (special tokens not counted) are the tokenizer's unknown token.

    `tokenizer`: a `tokenizers.Tokenizer`, a transformers fast tokenizer or a tokenizer.json path. Returns
    {"unk_token", "tokens", "unknown", "unknown_rate"}; a tokenizer without an unknown token (byte-level BPE,
    byte fallback) has none: unk_token None, unknown 0.
    """
    if isinstance(tokenizer, (str, Path)):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer))
    plain = plain_tokenizer(tokenizer)
    model = json.loads(plain.to_str())["model"]
    unk_token: str | None = None
    if model.get("unk_id") is not None and model.get("type") == "Unigram":  # SentencePiece: an index into its vocab
        unk_token = model["vocab"][int(model["unk_id"])][0]
    elif model.get("unk_token"):  # WordPiece, WordLevel, BPE with an unknown token
        unk_token = str(model["unk_token"])
    unk = plain.token_to_id(unk_token) if unk_token is not None else None
    total = unknown = 0
    for enc in plain.encode_batch([str(t) for t in texts], add_special_tokens=False):
        total += len(enc.ids)
        if unk is not None:
            unknown += sum(1 for i in enc.ids if i == unk)
    return {"unk_token": unk_token if unk is not None else None, "tokens": total, "unknown": unknown,
            "unknown_rate": unknown / total if total else 0.0}


def unknown_rate(tokenizer: Any, texts: Sequence[str]) -> float:
    """Share of the tokens of `texts` that are the tokenizer's unknown token (0 for tokenizers without one)."""
    return float(unknown_tokens(tokenizer, texts)["unknown_rate"])


def text_coverage(tokenizer: Any, texts: Sequence[str], *, what: str = "the training text",
                  threshold: float = UNKNOWN_WARN_RATE, limit: int = 20_000,
                  extending: bool = False) -> dict[str, Any]:
    """The coverage record of `texts` under `tokenizer` (unknown_tokens, the texts counted, the threshold) and,
    above the threshold, a `warning` that names the cause and the remedies; the warning is logged too. With
    `extending` (the recipe extends the vocabulary before fine-tuning) the record says so instead of warning.

    More than `limit` texts: an evenly spaced sample of `limit` of them is counted.
    """
    items = list(texts)
    if len(items) > limit:
        items = [items[i * len(items) // limit] for i in range(limit)]
    record = {**unknown_tokens(tokenizer, items), "texts": len(items), "threshold": threshold}
    if record["unknown_rate"] > threshold and extending:
        record["note"] = (f"{record['unknown_rate']:.0%} of the tokens of {what} are {record['unk_token']} before "
                          "the vocabulary extension (finetune.extend_vocab), which adds the missing characters")
    elif record["unknown_rate"] > threshold:
        record["warning"] = (
            f"{record['unknown_rate']:.0%} of the tokens of {what} are {record['unk_token']}: the teacher's "
            "vocabulary does not cover this language / script, so the model cannot tell those words apart and "
            "accuracy suffers. Remedies: a teacher whose vocabulary covers the text (a multilingual one such as "
            "xlm-roberta-base or bert-base-multilingual-cased, or one trained on the language), or extending the "
            "teacher's vocabulary with the text's characters before fine-tuning (finetune.extend_vocab: {})"
        )
        log.warning("%s", record["warning"])
    return record


def _rebuild_tokenizer(tokenizer: Any, data: dict[str, Any], keep_ids: Sequence[int]) -> Any:
    """The same tokenizer class, with the trimmed tokenizer.json (and vocab.txt, added-token ids) in place."""
    from transformers import AutoTokenizer

    remap = {old: new for new, old in enumerate(keep_ids)}
    with tempfile.TemporaryDirectory(prefix="edgellm-vocab-") as tmp:
        folder = Path(tmp)
        tokenizer.save_pretrained(folder)
        for stale in ("vocab.json", "merges.txt", "sentencepiece.bpe.model", "spm.model", "tokenizer.model"):
            (folder / stale).unlink(missing_ok=True)  # the slow tokenizer's files hold the untrimmed vocabulary
        (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        vocab_txt = folder / "vocab.txt"
        if vocab_txt.is_file():
            ordered = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
            vocab_txt.write_text("".join(t + "\n" for t, _ in ordered), encoding="utf-8")
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            cfg = json.loads(config_file.read_text(encoding="utf-8"))
            decoder = cfg.get("added_tokens_decoder")
            if isinstance(decoder, dict):
                cfg["added_tokens_decoder"] = {str(remap[int(k)]): v for k, v in decoder.items() if int(k) in remap}
            config_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
        return AutoTokenizer.from_pretrained(folder, use_fast=True)


def _slice_embeddings(model: Any, keep_ids: Sequence[int]) -> dict[str, int]:
    import torch

    index = torch.as_tensor(list(keep_ids), dtype=torch.long)
    remap = {old: new for new, old in enumerate(keep_ids)}
    old_in = model.get_input_embeddings()
    old_out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = old_out is not None and old_out.weight is old_in.weight
    before = old_in.weight.numel() * old_in.weight.element_size()
    pad = old_in.padding_idx
    new_in = torch.nn.Embedding(len(index), old_in.embedding_dim, padding_idx=remap.get(pad) if pad is not None else None,
                                dtype=old_in.weight.dtype)
    with torch.no_grad():
        new_in.weight.copy_(old_in.weight.detach()[index])
    model.set_input_embeddings(new_in)
    if old_out is not None:
        if tied:
            old_out.weight = new_in.weight
        else:
            before += old_out.weight.numel() * old_out.weight.element_size()
            old_out.weight = torch.nn.Parameter(old_out.weight.detach()[index].clone())
        if getattr(old_out, "bias", None) is not None:
            old_out.bias = torch.nn.Parameter(old_out.bias.detach()[index].clone())
        if hasattr(old_out, "out_features"):
            old_out.out_features = len(index)
    after = new_in.weight.numel() * new_in.weight.element_size()
    if old_out is not None and not tied:
        after += old_out.weight.numel() * old_out.weight.element_size()
    config = model.config
    config.vocab_size = len(index)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            setattr(config, key, remap.get(value, value))
    return {"embedding_bytes_before": before, "embedding_bytes_after": after}


def trim_vocabulary(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    min_count: int = 1,
    keep_characters: bool = True,
    held_out: Sequence[str] | None = None,
) -> TrimResult:
    """Keep the tokens `texts` use (see the module docstring); the model is changed in place.

    Args:
        texts: the task's training text (what the model will see).
        min_count: a token is kept when `texts` produce it at least this often (specials always are).
        keep_characters: also keep `c` and `##c` for every character of the kept tokens, so that unseen words made
            of seen characters split into characters instead of becoming [UNK].
        held_out: text not in `texts`, to report coverage (share of its tokens that are not [UNK] after trimming).
    """
    from edgellm.models import count_parameters

    data = _backend_json(tokenizer)
    _check_model(data)
    vocab_size = len(data["model"]["vocab"])
    kind = data["model"]["type"]
    rows = int(model.get_input_embeddings().weight.shape[0])
    if rows < vocab_size:
        raise ModelError(f"the model's embedding has {rows} rows but the tokenizer has {vocab_size} tokens")
    params_before = count_parameters(model)
    keep_ids, counts = choose_tokens(tokenizer, texts, min_count=min_count, keep_characters=keep_characters)
    _check_position_offset(model, keep_ids)
    trimmed = trim_tokenizer_json(data, keep_ids)
    new_tokenizer = _rebuild_tokenizer(tokenizer, trimmed, keep_ids)
    sizes = _slice_embeddings(model, keep_ids)
    report: dict[str, Any] = {
        "tokenizer_model": kind,
        "vocab_size_before": vocab_size,
        "vocab_size_after": len(keep_ids),
        "seen_tokens": len(counts),
        "min_count": min_count,
        "keep_characters": keep_characters,
        "texts": len(texts),
        "parameters_before": params_before,
        "parameters_after": count_parameters(model),
        **sizes,
        "bytes_saved": sizes["embedding_bytes_before"] - sizes["embedding_bytes_after"],
        "tokenizer_json_bytes_before": len(json.dumps(data, ensure_ascii=False).encode()),
        "tokenizer_json_bytes_after": len(json.dumps(trimmed, ensure_ascii=False).encode()),
    }
    if held_out:
        before = vocab_coverage(tokenizer, held_out)
        after = vocab_coverage(new_tokenizer, held_out)
        report["held_out"] = {
            "texts": len(held_out),
            "tokens_before": before["tokens"],
            "tokens_after": after["tokens"],
            "coverage_before": before["coverage"],
            "coverage": after["coverage"],  # share of held-out tokens that are not [UNK] after trimming
            "identical_texts": _identical_share(tokenizer, new_tokenizer, keep_ids, held_out),
        }
    log.info("vocabulary trimmed %d -> %d tokens, %.1f MB of embeddings saved", vocab_size, len(keep_ids),
             report["bytes_saved"] / 1e6)
    return TrimResult(model=model, tokenizer=new_tokenizer, keep_ids=list(keep_ids), report=report)


def _identical_share(old: Any, new: Any, keep_ids: Sequence[int], texts: Sequence[str]) -> float:
    """Share of `texts` whose trimmed tokens, mapped back to original ids, equal the original tokens."""
    items = [str(t) for t in texts]
    a = plain_tokenizer(old).encode_batch(items, add_special_tokens=False)
    b = plain_tokenizer(new).encode_batch(items, add_special_tokens=False)
    same = sum(1 for x, y in zip(a, b) if list(x.ids) == [keep_ids[i] for i in y.ids])
    return same / len(items) if items else 1.0


# --- BPE and Unigram (SentencePiece) ---------------------------------------------------------------------------

_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def _token_ids(model: dict[str, Any]) -> dict[str, int]:
    """token -> id of a tokenizer.json model section (Unigram's vocab is a list of [piece, score])."""
    if model.get("type") == "Unigram":
        return {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    return dict(model["vocab"])


def _fallback_ids(model: dict[str, Any]) -> set[int]:
    """Single-character tokens (with or without the subword prefix / suffix) and `<0xNN>` byte tokens: what any
    text the original tokenizer could read decomposes into."""
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    keep = set()
    for token, i in _token_ids(model).items():
        core = token[len(prefix):] if prefix and token.startswith(prefix) else token
        core = core[: -len(suffix)] if suffix and core.endswith(suffix) else core
        if len(core) == 1 or (model.get("byte_fallback") and _BYTE_TOKEN.fullmatch(token)):
            keep.add(i)
    return keep


def _bpe_merges(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model.get("merges", [])]


def _merge_result(model: dict[str, Any], left: str, right: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    return left + (right[len(prefix):] if prefix and right.startswith(prefix) else right)


def _merge_closure(model: dict[str, Any], keep: set[int]) -> set[int]:
    """`keep` plus every token a kept token is merged from, recursively (all the merges that make it)."""
    ids = _token_ids(model)
    tokens = {i: t for t, i in ids.items()}
    makers: dict[str, list[tuple[str, str]]] = {}
    for left, right in _bpe_merges(model):
        makers.setdefault(_merge_result(model, left, right), []).append((left, right))
    kept = {tokens[i] for i in keep if i in tokens}
    stack = list(kept)
    while stack:
        for pair in makers.get(stack.pop(), ()):
            for part in pair:
                if part in ids and part not in kept:
                    kept.add(part)
                    stack.append(part)
    return set(keep) | {ids[t] for t in kept}


def _choose_subword_tokens(model: dict[str, Any], specials: set[int], counts: Counter, min_count: int,
                           keep_characters: bool) -> list[int]:
    """Original ids a BPE / Unigram vocabulary keeps: specials, tokens seen `min_count` times, the single-character
    fallback (with `keep_characters`), a BPE's merge parts, a Unigram's lowest-scoring piece."""
    keep = set(specials) | {i for i, c in counts.items() if c >= min_count}
    if keep_characters:
        keep |= _fallback_ids(model)
    if model["type"] == "BPE":
        keep = _merge_closure(model, keep)
    else:  # Unigram: the unknown token's penalty is the lowest score minus 10; keep that score in the vocabulary
        scores = [float(score) for _piece, score in model["vocab"]]
        keep.add(min(range(len(scores)), key=scores.__getitem__))
        if model.get("unk_id") is not None:
            keep.add(int(model["unk_id"]))
    return sorted(keep)


def _trim_subword_model(model: dict[str, Any], keep_ids: Sequence[int]) -> dict[str, Any]:
    """A copy of a BPE / Unigram model section holding `keep_ids` only, renumbered 0..n-1 in order; a BPE keeps
    the merges whose parts and result are all kept, in their order and format."""
    out = json.loads(json.dumps(model))
    if model["type"] == "Unigram":
        out["vocab"] = [model["vocab"][old] for old in keep_ids]
        if model.get("unk_id") is not None:
            remap = {old: new for new, old in enumerate(keep_ids)}
            if int(model["unk_id"]) not in remap:
                raise ModelError("the unknown piece must be kept when trimming a Unigram vocabulary")
            out["unk_id"] = remap[int(model["unk_id"])]
        return out
    tokens = {i: t for t, i in model["vocab"].items()}
    out["vocab"] = {tokens[old]: new for new, old in enumerate(keep_ids)}
    kept = set(out["vocab"])
    out["merges"] = [m for m, (left, right) in zip(model.get("merges", []), _bpe_merges(model))
                     if left in kept and right in kept and _merge_result(model, left, right) in kept]
    return out


def _check_position_offset(model: Any, keep_ids: Sequence[int]) -> None:
    """RoBERTa-style embeddings number positions after the pad id (`embeddings.padding_idx`); trimming must not
    move it, or every position would shift."""
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    pad = getattr(embeddings, "padding_idx", None)
    if isinstance(pad, int) and pad in keep_ids and list(keep_ids).index(pad) != pad:
        raise ModelError(f"trimming would move the pad token (id {pad}) that {type(model).__name__} numbers "
                         "positions from; keep the tokens before it (the specials)")


# --- extension: the characters a task's text needs, appended with new embedding rows ------------------------------

@dataclass
class ExtendResult:
    model: Any  # the same model object, its embedding table grown by len(added) rows
    tokenizer: Any  # a new fast tokenizer whose vocabulary ends with the added tokens
    added: list[str]  # the new tokens; added[i] has id vocab_size_before + i
    report: dict[str, Any]


def _check_extendable(data: dict[str, Any]) -> dict[str, Any]:
    model = _check_model(data, EXTENDABLE_MODELS, "extension",
                         "remove finetune.extend_vocab, or use a BERT-family teacher, or one whose vocabulary covers "
                         "the text")
    if not model.get("unk_token") or model["unk_token"] not in model.get("vocab", {}):
        raise ModelError("vocabulary extension needs a WordPiece tokenizer with an unknown token in its vocabulary")
    return model


def unknown_pieces(tokenizer: Any, texts: Sequence[str]) -> Counter:
    """The pieces whose absence makes words of `texts` [UNK], with how often those words need them.

    Each word (after the tokenizer's normalizer and pre-tokenizer) that WordPiece maps to the unknown token counts,
    once per occurrence, its first character `c` when the vocabulary lacks `c`, and each later character `c` when
    it lacks `##c`. With all of a word's pieces added, WordPiece's greedy longest match can no longer fail on it.
    Words longer than the model's max_input_chars_per_word stay [UNK] whatever is added and are not counted.
    """
    plain = plain_tokenizer(tokenizer)
    model = _check_extendable(json.loads(plain.to_str()))
    vocab: dict[str, int] = model["vocab"]
    prefix = model.get("continuing_subword_prefix", "##")
    longest = int(model.get("max_input_chars_per_word", 100))
    normalizer, pre, wordpiece = plain.normalizer, plain.pre_tokenizer, plain.model
    words: Counter = Counter()
    for text in texts:
        norm = normalizer.normalize_str(str(text)) if normalizer is not None else str(text)
        words.update(w for w, _ in (pre.pre_tokenize_str(norm) if pre is not None else [(norm, (0, len(norm)))]))
    unk = model["unk_token"]
    pieces: Counter = Counter()
    for word, n in words.items():
        if len(word) > longest:
            continue
        tokens = wordpiece.tokenize(word)
        if len(tokens) != 1 or tokens[0].value != unk or word == unk:
            continue
        for i, ch in enumerate(word):
            piece = ch if i == 0 else prefix + ch
            if piece not in vocab:
                pieces[piece] += n
    return pieces


def extend_tokenizer_json(data: dict[str, Any], tokens: Sequence[str]) -> dict[str, Any]:
    """A copy of tokenizer.json `data` whose WordPiece vocabulary ends with `tokens` (ids len(vocab) onwards)."""
    model = _check_extendable(data)
    out = json.loads(json.dumps(data))
    vocab = out["model"]["vocab"]
    start = len(vocab)
    if sorted(vocab.values()) != list(range(start)):
        raise ModelError("the WordPiece vocabulary's ids are not 0..n-1; it cannot be extended")
    taken = [t for t in tokens if t in model["vocab"]]
    if taken or len(set(tokens)) != len(tokens):
        raise ModelError(f"tokens to add must be new and distinct; already there or repeated: {taken[:5] or tokens}")
    for i, token in enumerate(tokens):
        vocab[token] = start + i
    return out


EXTEND_SEED = 0  # init "normal": the seed of the rows drawn


def _grow_embeddings(model: Any, count: int, init: str, unk_id: int) -> dict[str, Any]:
    """Append `count` rows to the input embedding (and a tied / untied output layer, via transformers' resize):
    the mean of the existing rows ("mean"), the unknown token's row ("unk"), or rows drawn (seeded) from a normal
    distribution with the existing rows' mean and covariance ("normal": distinct from the first step on)."""
    import torch

    old = model.get_input_embeddings().weight
    rows, width = int(old.shape[0]), int(old.shape[1])
    with torch.no_grad():
        table = old.detach().double()
        mean = table.mean(0)
        if init == "normal":
            centred = table - mean
            cov = centred.T @ centred / max(1, rows - 1)
            factor = torch.linalg.cholesky(cov + 1e-8 * cov.diagonal().mean() * torch.eye(width, dtype=cov.dtype))
            draws = torch.randn(count, width, generator=torch.Generator().manual_seed(EXTEND_SEED), dtype=cov.dtype)
            fill = mean + draws @ factor.T  # (count, width)
        else:
            fill = (mean if init == "mean" else table[unk_id]).expand(count, width)
    model.resize_token_embeddings(rows + count, mean_resizing=False)
    new = model.get_input_embeddings().weight
    with torch.no_grad():
        new[rows:] = fill.to(new.dtype)
    return {"rows_before": rows, "rows_after": rows + count,
            "embedding_bytes_added": count * int(new.shape[1]) * new.element_size()}


def extend_vocabulary(model: Any, tokenizer: Any, texts: Sequence[str], *, config: Any = None,
                      held_out: Sequence[str] | None = None) -> ExtendResult:
    """Add the pieces `texts` need (`unknown_pieces`, at least `config.min_count` times, the `config.max_tokens`
    most frequent) to the WordPiece vocabulary and the model's embedding; the model is changed in place.

    Args:
        config: an `edgellm.recipe.ExtendVocabConfig` (None: its defaults).
        held_out: other text (e.g. the test split) whose unknown rate before / after is reported; it never chooses
            tokens.
    Returns the model, the new tokenizer (tokenizer.json and vocab.txt both extended), the added tokens and a report
    with the unknown rates of `texts` (and `held_out`) before and after.
    """
    from edgellm.models import count_parameters
    from edgellm.recipe import ExtendVocabConfig

    config = ExtendVocabConfig() if config is None else config
    config.validate("extend_vocab")
    data = _backend_json(tokenizer)
    model_json = _check_extendable(data)
    if not texts:
        raise DataError("vocabulary extension needs the task's training texts; got none")
    vocab_size = len(model_json["vocab"])
    rows = int(model.get_input_embeddings().weight.shape[0])
    if rows != vocab_size:
        raise ModelError(f"the model's embedding has {rows} rows but the tokenizer has {vocab_size} tokens; "
                         "extension appends rows after the last token, so the two must match")
    pieces = unknown_pieces(tokenizer, texts)
    first = {p: i for i, p in enumerate(pieces)}  # ties: first seen first
    ranked = sorted((p for p, n in pieces.items() if n >= config.min_count), key=lambda p: (-pieces[p], first[p]))
    added = ranked[: config.max_tokens]
    params_before = count_parameters(model)
    before = {"train": unknown_tokens(tokenizer, texts)}
    if held_out:
        before["held_out"] = unknown_tokens(tokenizer, held_out)
    extended = extend_tokenizer_json(data, added)
    new_tokenizer = _rebuild_tokenizer(tokenizer, extended, list(range(vocab_size)))
    sizes = _grow_embeddings(model, len(added), config.init, int(model_json["vocab"][model_json["unk_token"]]))
    after = {"train": unknown_tokens(new_tokenizer, texts)}
    if held_out:
        after["held_out"] = unknown_tokens(new_tokenizer, held_out)
    rates = {part: {"texts": len(texts) if part == "train" else len(held_out or []),
                    "tokens_before": before[part]["tokens"], "tokens_after": after[part]["tokens"],
                    "unknown_rate_before": before[part]["unknown_rate"],
                    "unknown_rate_after": after[part]["unknown_rate"]} for part in before}
    report: dict[str, Any] = {
        "tokenizer_model": "WordPiece",
        "vocab_size_before": vocab_size,
        "vocab_size_after": vocab_size + len(added),
        "added": len(added),
        "candidates": len(pieces),  # distinct missing pieces seen at least once
        "below_min_count": sum(1 for n in pieces.values() if n < config.min_count),
        "capped": max(0, len(ranked) - len(added)),
        "min_count": config.min_count,
        "max_tokens": config.max_tokens,
        "init": config.init,
        "examples": added[:20],
        "parameters_before": params_before,
        "parameters_after": count_parameters(model),
        **sizes,
        **rates,
    }
    log.info("vocabulary extended %d -> %d tokens; unknown tokens of the training text %.1f%% -> %.1f%%",
             vocab_size, vocab_size + len(added), 100 * rates["train"]["unknown_rate_before"],
             100 * rates["train"]["unknown_rate_after"])
    return ExtendResult(model=model, tokenizer=new_tokenizer, added=list(added), report=report)
