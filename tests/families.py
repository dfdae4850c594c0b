"""Tiny seeded encoders of every family edgellm.families knows, built from configs with tokenizers trained here
(WordPiece, byte-level BPE, SentencePiece-style Unigram): no download, a fraction of a second each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import _WORDS, save_tiny_tokenizer

HIDDEN, HEADS, FFN, LAYERS, POSITIONS = 32, 4, 64, 3, 64
TRAIN = [
    "the film was great and the acting was really good",
    "a boring plot , awful script and a waste of money",
    "i love this movie , the music is beautiful",
    "the worst ending ever , so slow and dull",
    "funny characters and a brilliant story",
    "they never watch it again : terrible , too long",
    "she was sad but the scenes were fun",
    "it is not bad , very short and fast",
]
TEST = [  # unseen sentences made of known words, plus words and characters the training text lacks
    "the story was dull and the music awful",
    "great fun , brilliant acting",
    "zebras quietly juggle 42 kumquats",
]
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_DEBERTA_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]


def corpus() -> list[str]:
    return TRAIN + [" ".join(_WORDS[i:i + 7]) for i in range(0, len(_WORDS), 4)]


def _bpe(folder: Path) -> Any:
    """Byte-level BPE with RoBERTa's specials and post-processor (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=_ROBERTA_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=POSITIONS)
    fast.save_pretrained(folder)
    return fast


def _unigram(folder: Path, specials: list[str], template: tuple[str, str]) -> Any:
    """SentencePiece-style Unigram (Metaspace) with `specials` first and a [CLS] $A [SEP] template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    unk = next(t for t in specials if "unk" in t.lower())
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=specials, unk_token=unk, show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    cls, sep = template
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    pad = next(t for t in specials if "pad" in t.lower())
    mask = next(t for t in specials if "mask" in t.lower())
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token=cls, sep_token=sep, bos_token=cls, eos_token=sep,
                                   unk_token=unk, pad_token=pad, mask_token=mask, model_max_length=POSITIONS)
    fast.save_pretrained(folder)
    return fast


def _config(family: str, tok: Any) -> Any:
    from transformers import (BertConfig, CamembertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig,
                              ModernBertConfig, RobertaConfig, XLMRobertaConfig)

    n = len(tok)
    bert_like = dict(vocab_size=n, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    if family == "bert":
        return BertConfig(**bert_like, max_position_embeddings=POSITIONS)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=n, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                                max_position_embeddings=POSITIONS)
    if family in ("roberta", "xlm-roberta", "camembert"):
        cls = {"roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig, "camembert": CamembertConfig}[family]
        return cls(**bert_like, **ids, max_position_embeddings=POSITIONS + 2, type_vocab_size=1)
    if family == "electra":
        return ElectraConfig(**bert_like, embedding_size=16, max_position_embeddings=POSITIONS)  # with a projection
    if family == "deberta-v2":  # v3 settings: relative positions in buckets, shared attention keys
        return DebertaV2Config(**bert_like, **ids, max_position_embeddings=POSITIONS, relative_attention=True,
                               pos_att_type=["p2c", "c2p"], position_biased_input=False, position_buckets=16,
                               norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0)
    if family == "modernbert":  # layer 0 global, 1 and 2 sliding-window (8 tokens) attention
        return ModernBertConfig(**bert_like, **ids, cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                                max_position_embeddings=POSITIONS, global_attn_every_n_layers=3, local_attention=8,
                                reference_compile=False)
    raise KeyError(family)


TOKENIZERS = {"bert": "WordPiece", "distilbert": "WordPiece", "electra": "WordPiece", "roberta": "BPE",
              "modernbert": "BPE", "xlm-roberta": "Unigram", "camembert": "Unigram", "deberta-v2": "Unigram"}


def save_tokenizer(family: str, folder: Path) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    kind = TOKENIZERS[family]
    if kind == "WordPiece":
        return save_tiny_tokenizer(folder)
    if kind == "BPE":
        return _bpe(folder)
    if family == "deberta-v2":
        return _unigram(folder, _DEBERTA_SPECIALS, ("[CLS]", "[SEP]"))
    return _unigram(folder, _ROBERTA_SPECIALS, ("<s>", "</s>"))


def build_family(family: str, folder: Path, *, task: str = "text-classification", seed: int = 0) -> Path:
    """A seeded tiny model of `family` with its tokenizer, saved as a Hugging Face folder (random weights,
    initializer scaled up so that outputs differ clearly between inputs)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    tok = save_tokenizer(family, folder)
    config = _config(family, tok)
    config.initializer_range = 0.2
    torch.manual_seed(seed)
    if task == "text-classification":
        config.id2label, config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModel.from_config(config)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder
