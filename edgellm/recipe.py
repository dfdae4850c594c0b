"""Recipes: one YAML file describing the whole pipeline, as validated dataclasses.

Each stage's options live in one dataclass here, and each default is written once, in its field. Stage modules
take these dataclasses (``distill(..., config: DistillConfig)``); the CLI and the pipeline only build them.

    recipe = load_recipe("export/sentiment-minilm.yaml")
    recipe.distill.temperature      # 2.0
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from edgellm.config import check_range, from_dict, to_dict
from edgellm.errors import ConfigError

__all__ = [
    "Task",
    "SplitConfig",
    "DataConfig",
    "ExtendVocabConfig",
    "FinetuneConfig",
    "DistillConfig",
    "PruneConfig",
    "QuantizeConfig",
    "ExportConfig",
    "EvaluateConfig",
    "CausalLMConfig",
    "Recipe",
    "load_recipe",
    "apply_overrides",
    "recipe_from_dict",
]

Task = Literal["text-classification", "feature-extraction", "text-generation"]


@dataclass
class SplitConfig:
    """Seeded train / validation / test split, recorded in the artifact."""

    validation: float = 0.1  # fraction of rows held out for model selection
    test: float = 0.1  # fraction held out for the final report only
    seed: int = 13  # shuffling seed

    def validate(self, where: str) -> None:
        check_range(f"{where}.validation", self.validation, low=0.0, high=1.0, high_open=True)
        check_range(f"{where}.test", self.test, low=0.0, high=1.0, high_open=True)
        if self.validation + self.test >= 1.0:
            raise ConfigError(f"{where}: validation + test = {self.validation + self.test} leaves no training data")


@dataclass
class DataConfig:
    """Where the task's text comes from: a built-in set, a file, or a Hugging Face dataset."""

    name: str | None = None  # built-in: movie-reviews, tweets, nyt-editorials, amazon-reviews (VADER), chinese-reviews; unlabelled prose: sotu, moby-dick
    path: str | None = None  # CSV / TSV / JSONL / text file, or a `datasets` save_to_disk folder
    hf_dataset: str | None = None  # Hugging Face `datasets` name, "name" or "name:config" (needs `datasets`)
    text_column: str = "text"  # column holding the text (files and Hugging Face datasets)
    label_column: str = "label"  # column holding the class (name or integer) for text-classification
    split: SplitConfig = field(default_factory=SplitConfig)
    max_rows: int | None = None  # cap on rows read (after shuffling), for quick runs
    max_length: int | None = 128  # tokens per text in training and evaluation; None -> the model's limit

    def validate(self, where: str) -> None:
        given = [k for k in ("name", "path", "hf_dataset") if getattr(self, k)]
        if len(given) > 1:
            raise ConfigError(f"{where}: give one of name / path / hf_dataset, not {given}")
        check_range(f"{where}.max_rows", self.max_rows, low=1)
        check_range(f"{where}.max_length", self.max_length, low=8)

    @property
    def empty(self) -> bool:
        return not (self.name or self.path or self.hf_dataset)


Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class ScheduleConfig:
    """The training schedule both training stages share (fields first in FinetuneConfig and DistillConfig)."""

    epochs: float = 3.0  # passes over the training split (fractions allowed)
    learning_rate: float = 5e-5  # AdamW peak learning rate
    batch_size: int = 32  # rows per optimizer step (all processes together)
    warmup_ratio: float = 0.06  # share of steps with linear warm-up, then linear decay to 0
    weight_decay: float = 0.01  # AdamW decay (not on biases and LayerNorm weights)
    max_grad_norm: float = 1.0  # gradient clipping (global L2 norm)
    eval_every: int = 200  # optimizer steps between validation runs and checkpoints (best one kept)
    seed: int = 42  # data order, dropout (and a new head's initialisation)
    precision: Precision = "auto"  # autocast dtype; auto = bf16 where the CPU/GPU has native bf16, else fp32

    def validate(self, where: str) -> None:
        check_range(f"{where}.epochs", self.epochs, low=0.0, low_open=True)
        check_range(f"{where}.learning_rate", self.learning_rate, low=0.0, low_open=True)
        check_range(f"{where}.batch_size", self.batch_size, low=1)
        check_range(f"{where}.warmup_ratio", self.warmup_ratio, low=0.0, high=1.0)
        check_range(f"{where}.weight_decay", self.weight_decay, low=0.0)
        check_range(f"{where}.max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        check_range(f"{where}.eval_every", self.eval_every, low=1)


@dataclass
class ExtendVocabConfig:
    """Vocabulary extension before fine-tuning (edgellm.vocab.extend_vocabulary): the characters of the training
    text that the teacher's WordPiece vocabulary maps to [UNK] become tokens with new embedding rows."""

    min_count: int = 2  # a missing character (piece c or ##c) is added when the training text holds it this often
    max_tokens: int = 10_000  # cap on the tokens added, most frequent first
    init: Literal["normal", "mean", "unk"] = "normal"  # new embedding rows: drawn (seeded) with the existing rows' mean and covariance, their mean, or the [UNK] row

    def validate(self, where: str) -> None:
        for name in ("min_count", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{name} = {value!r} must be an integer >= 1")
        if self.init not in ("normal", "mean", "unk"):
            raise ConfigError(f"{where}.init = {self.init!r} is not one of ['normal', 'mean', 'unk']")


@dataclass
class FinetuneConfig(ScheduleConfig):
    """Teacher fine-tuning (a task head on a teacher that has none); the schedule fields are ScheduleConfig's."""

    enabled: bool = True  # skipped anyway when the teacher's head already matches the labels
    extend_vocab: ExtendVocabConfig | None = None  # add the training text's [UNK] characters to the vocabulary first ({} = defaults); null = off


@dataclass
class DistillConfig(ScheduleConfig):
    """Student built from the teacher's layers, trained on the teacher's outputs; the schedule fields are
    ScheduleConfig's (its learning rate is 1e-4 here)."""

    learning_rate: float = 1e-4  # AdamW peak learning rate (students learn faster than a fine-tuned teacher)
    layers: list[int] | None = None  # teacher layer indices to keep, e.g. [0, 2, 4]; None -> num_layers evenly
    num_layers: int | None = 3  # used when `layers` is None
    ffn_size: int | None = None  # narrower FFN for the student (neurons kept by importance); None keeps it
    temperature: float = 2.0  # softening of both distributions in the KD term
    alpha_kd: float = 1.0  # weight of KL(teacher || student) at `temperature` (scaled by T^2)
    alpha_ce: float = 0.5  # weight of cross-entropy on hard labels (labelled rows only)
    alpha_hidden: float = 0.0  # weight of hidden-state MSE (TinyBERT); needs matching widths
    alpha_attention: float = 0.0  # weight of attention-map KL (MiniLM); needs matching head counts
    embedding_loss: Literal["mse", "cosine", "mse+cosine"] = "mse+cosine"  # feature-extraction: pooled-vector loss
    augment_with: list[str] = field(default_factory=list)  # extra unlabelled text (built-in names / files) for KD

    def validate(self, where: str) -> None:
        super().validate(where)
        check_range(f"{where}.temperature", self.temperature, low=0.0, low_open=True)
        check_range(f"{where}.num_layers", self.num_layers, low=1)
        check_range(f"{where}.ffn_size", self.ffn_size, low=1)
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise ConfigError(f"{where}.layers = {self.layers!r} must be a non-empty list of distinct layer indices")
        if self.layers is None and self.num_layers is None:
            raise ConfigError(f"{where}: set layers (e.g. [0, 2, 4]) or num_layers")
        for name in ("alpha_kd", "alpha_ce", "alpha_hidden", "alpha_attention"):
            check_range(f"{where}.{name}", getattr(self, name), low=0.0)


@dataclass
class PruneConfig:
    """Structured pruning (matrices physically sliced, config updated) and/or unstructured magnitude sparsity.

    Order: layers, then heads and FFN neurons (scored once on the unpruned model), recovery, then sparsity (so that
    recovery training does not refill the zeros). See edgellm/prune/.
    """

    heads: float = 0.0  # fraction of attention heads (KV groups for GQA decoders) to remove, in [0, 1)
    ffn: float = 0.0  # fraction of FFN intermediate neurons to remove (the same number in every layer), in [0, 1)
    layers: float = 0.0  # fraction of whole layers to remove, in [0, 1)
    target_params: int | None = None  # parameter budget: one heads + FFN ratio is searched (heads/ffn must be 0)
    importance: Literal["taylor", "magnitude"] = "taylor"  # taylor: |grad x weight| on task data; magnitude: no data
    importance_batches: int = 16  # batches of task data used to score units
    batch_size: int = 16  # texts per importance batch
    max_length: int = 128  # tokens per text when scoring
    sparsity: float = 0.0  # unstructured magnitude sparsity of the block matrices, in [0, 1)
    sparsity_scope: Literal["global", "layer"] = "global"  # rank weights across all matrices, or within each
    recovery_epochs: float = 1.0  # short distillation from the unpruned model afterwards (0 = none)
    recovery_alpha_hidden: float | None = None  # hidden-state MSE weight in recovery (each layer learns its unpruned self); None -> distill.alpha_hidden

    def validate(self, where: str) -> None:
        for name in ("heads", "ffn", "layers", "sparsity"):
            check_range(f"{where}.{name}", getattr(self, name), low=0.0, high=1.0, high_open=True)
        check_range(f"{where}.target_params", self.target_params, low=1)
        check_range(f"{where}.importance_batches", self.importance_batches, low=1)
        check_range(f"{where}.batch_size", self.batch_size, low=1)
        check_range(f"{where}.max_length", self.max_length, low=2)
        check_range(f"{where}.recovery_epochs", self.recovery_epochs, low=0.0)
        check_range(f"{where}.recovery_alpha_hidden", self.recovery_alpha_hidden, low=0.0)
        if self.target_params is not None and (self.heads or self.ffn):
            raise ConfigError(f"{where}: give either target_params or heads / ffn ratios, not both "
                              f"(target_params={self.target_params}, heads={self.heads}, ffn={self.ffn})")


@dataclass
class QuantizeConfig:
    """INT8 per backend (edgellm.quantize), each model evaluated on validation. None fields come from the preset."""

    mode: Literal["dynamic", "static", "weight-only", "none"] = "dynamic"  # ORT dynamic / calibrated QDQ / int8 weights only; OpenVINO has no dynamic format, so dynamic -> NNCF static there
    backends: list[Literal["onnxruntime", "openvino"]] = field(default_factory=lambda: ["onnxruntime", "openvino"])  # runtimes to emit INT8 models for
    preset: str | None = None  # key of edgellm.quantize.PRESETS (avx512-vnni, avx2, arm64, intel-npu, qnn-htp); None -> the target profile's, else this machine's
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"  # static: how activation ranges are chosen
    calibration_samples: int = 300  # static: training texts fed to calibration, exactly this many
    per_channel: bool | None = None  # one weight scale per output channel; None -> preset
    reduce_range: bool | None = None  # 7-bit weights (AVX2 without VNNI saturates otherwise); None -> preset
    fuse: bool | None = None  # ORT dynamic: fuse attention / layer norm / GELU before quantizing; None -> preset
    quantize_embeddings: bool = True  # INT8 the embedding tables too (half of a small encoder's bytes)
    exclude: list[str] = field(default_factory=list)  # node names (ORT) / op names (OpenVINO) always kept in float
    tolerance: float | None = None  # max accuracy drop in points below FP32 on validation; None = no accuracy control
    max_fallback: float = 0.25  # accuracy control: largest fraction of the quantizable ops it may keep in float
    fp16: bool = False  # also emit an OpenVINO IR with FP16 weights

    def validate(self, where: str) -> None:
        check_range(f"{where}.calibration_samples", self.calibration_samples, low=1)
        if self.tolerance is not None and self.tolerance < 0:
            raise ConfigError(f"{where}.tolerance = {self.tolerance} is negative: it is the largest accuracy drop "
                              "(points below FP32) allowed; give 0 or more")
        check_range(f"{where}.max_fallback", self.max_fallback, low=0.0, high=1.0)
        if not self.backends:
            raise ConfigError(f"{where}.backends is empty: name onnxruntime and/or openvino, or set mode: none")
        if self.preset is not None:
            from edgellm.quantize.presets import PRESETS

            if self.preset not in PRESETS:
                from edgellm.config import suggest

                raise ConfigError(f"{where}.preset = {self.preset!r} is not a known preset{suggest(self.preset, PRESETS)}"
                                  f" (known: {', '.join(PRESETS)})")

    @classmethod
    def for_target(cls, preset: str, **overrides: Any) -> QuantizeConfig:
        """The config a CPU family / device preset recommends (its first mode), e.g. for_target("avx2")."""
        from edgellm.quantize.presets import get_preset

        p = get_preset(preset)
        return from_dict(cls, {"preset": p.key, "mode": p.modes[0], "backends": list(p.backends), **overrides},
                         f"QuantizeConfig.for_target({preset!r})")


@dataclass
class ExportConfig:
    formats: list[Literal["onnx", "openvino"]] = field(default_factory=lambda: ["onnx", "openvino"])
    max_length: int | None = 128  # tokens; None -> the model's own limit
    trim_vocab: bool = False  # WordPiece / BPE / Unigram: keep tokens the training texts use + specials + their characters (edgellm.vocab)
    vocab_texts: list[str] = field(default_factory=list)  # trim_vocab: more text whose tokens are kept too (built-in names / files, as distill.augment_with)
    atol: float = 1e-4  # FP32 export vs torch, max abs difference on real text
    cls_only: bool = True  # classifiers of families that allow it (docs/compatibility.md): the last layer computes the [CLS] position only (same logits, checked); false keeps the full graph


@dataclass
class EvaluateConfig:
    latency: bool = True  # measure p50 latency per stage (batch 1); the artifact's models all in the same alternating rounds
    latency_length: int = 128  # tokens for the padded latency measurement
    repeat: int = 100  # timed calls per latency measurement (after 10 warm-up calls)
    threads: int | None = 2  # inference threads for every measurement (torch, ONNX Runtime, OpenVINO)


# causal_lm.int4_fallback: auto tries these steps in turn, each (node-name suffixes whose 4-bit weights keep 8 bits,
# share of the 4-bit weights kept at 8 bits by largest output error), added to the recipe's int4_keep_8bit. On
# SmolLM2-135M with none, the 4-bit model lost 23.5 points of zero-shot sentiment on validation reviews at 1.035x
# perplexity; shares by error alone won back at most 16.5 of them (0.5 of the weights), the attention inputs alone
# 20 (15.6%), the attention inputs and the FFN's down projection 22.5 (40.6%, as llama.cpp's Q4_K_M mixes keep
# attn_v and ffn_down in more bits): docs/text-generation.md
ATTENTION_INPUTS = ("qkv", "q_proj", "k_proj", "v_proj")  # the fused graph's one projection, the plain graph's three
INT4_FALLBACK_LADDER: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.0),
    (ATTENTION_INPUTS, 0.0),
    ((*ATTENTION_INPUTS, "down_proj"), 0.0),
    ((*ATTENTION_INPUTS, "down_proj"), 0.5),
)


@dataclass
class CausalLMConfig:
    """text-generation extras (edgellm.train.causal, edgellm.exporting.decoder). The student's layers, KD
    temperature and schedule come from `distill`; the INT8 modes from `quantize.mode`; formats from `export`."""

    layer_selection: Literal["block-influence", "uniform"] = "block-influence"  # how distill.num_layers teacher layers are picked when distill.layers is null
    width_selection: Literal["activation", "magnitude"] = "activation"  # which FFN neurons distill.ffn_size keeps: largest mean activation on validation text (Minitron) or largest weights
    corpora: list[str] = field(default_factory=lambda: ["movie-reviews", "tweets", "amazon-reviews"])  # built-in text merged with `data`, each split the seeded way (train / validation / test): VADER sentences, prose passages (sotu, moby-dick)
    corpus_rows: dict[str, int] = field(default_factory=dict)  # at most this many rows of a corpus (a seeded sample, before the split): how much of a large corpus joins the mix
    out_of_domain: list[str] = field(default_factory=lambda: ["nyt-editorials"])  # text never trained on (built-in names, files, hf:NAME): out-of-domain perplexity, by source and pooled (causal_lm.eval_texts passages split among the sources); must not overlap the training text
    teacher_samples: int = 0  # texts the teacher writes from diverse prompts (seeded, cached) added to training: general-domain data
    sample_tokens: int = 256  # new tokens at most per teacher text (<= 512)
    sample_seed: int = 0  # seed of the teacher prompts' order and of sampling (text i uses sample_seed + i)
    corpus_chat: bool = True  # teacher texts are trained on as the conversation they answer (chat template: the prompt, then the reply) when the teacher has one, so the student learns the format it is prompted in; false: the reply alone
    pack_tokens: int | None = None  # distillation rows: the training texts back to back (EOS between) cut into rows of this many tokens (no padding, the context of longer text; SmolLM2 on this CPU: 486 training tokens/s in rows of 256 against 335 in rows of 32); None: one text per row, each cut to data.max_length
    token_budget: int | None = None  # distillation stops after this many training tokens (None: distill.epochs / budget_minutes decide)
    freeze_embeddings: bool = True  # keep the teacher's (tied) embedding / LM head matrix fixed
    teacher_precision: Literal["fp32", "bf16"] = "fp32"  # the frozen teacher's weights during distillation (bf16: faster where the CPU has AMX, targets rounded)
    eval_rows: int = 400  # validation sentences scored (perplexity) at each evaluation during distillation
    eval_texts: int = 200  # evaluate stage: held-out texts scored per model, in-domain (test split) and out-of-domain each (the out-of-domain passages split among its sources)
    agreement_texts: int = 40  # evaluate stage: texts (half in-domain, half out-of-domain) for KL and top-1 agreement with the FP32 teacher
    sentiment_examples: int = 200  # evaluate stage: movie-reviews test rows (half of each label where the split has them) for zero-shot sentiment accuracy by prompting (0 = skip)
    decode_tokens: int = 128  # evaluate stage: new tokens per timed generation (prompt: evaluate.latency_length tokens)
    decode_repeat: int = 3  # evaluate stage: timed generations per model (median; after one warm-up)
    max_steps: int | None = None  # stop distillation after this many optimizer steps (the schedule spans distill.epochs)
    budget_minutes: float | None = None  # train about this long: the schedule's length is planned from timed trial steps and re-planned from the run's own step time, within distill.epochs
    recipe_minutes: float | None = None  # the whole recipe in about this long, instead of budget_minutes: distillation trains for what the stages before it took (as recorded, also when reused) and a prediction of the stages after it leave; the prediction scales this run's measurements of the teacher (edgellm.pipeline_lm.plan_recipe_time) and is recorded beside what they took
    context_length: int | None = 2048  # export: prompt + output tokens; None -> the model's max_position_embeddings
    stateful: bool = True  # export: OpenVINO IR with the KV cache as internal state (batch 1); false: past/present I/O
    logits_atol: float = 1e-3  # export: FP32 decoder logits vs torch, max abs difference on real text
    graph: Literal["fused", "plain"] = "fused"  # export: ONNX Runtime graph: fused kernels (GroupQueryAttention, shared KV buffer, MatMulNBits) or plain ONNX ops
    weight_bits: list[int] = field(default_factory=lambda: [8, 4])  # quantize: ONNX Runtime block-quantized weight formats made (onnx-int8, onnx-int4)
    block_size: int = 32  # quantize: 4-bit weights per scale along the input dimension (a last partial block is padded); 64 costs 1.13x FP32 perplexity against 1.09x on SmolLM2
    block_size_8bit: int = 64  # quantize: the same for every 8-bit weight (onnx-int8, lm_head, 4-bit fallback): 1.24x the decode speed of 32; 128 was 1.012x FP32 perplexity
    block_size_8bit_by_name: dict[str, int] = field(default_factory=lambda: {"down_proj": 32, "lm_head": 32})  # quantize: 8-bit weights of MatMuls whose name ends with a key use its block size: down_proj's input carries the FFN's outliers (SmolLM2, held-out prose: 1.0036x FP32 perplexity against 1.0066x all at 64, at 0.92x the speed), lm_head's the final norm's (the 18-layer student, validation: 1.0050x against 1.0101x with the head at 64; the head's product 1.35 against 1.24 ms a token)
    int4_method: Literal["gptq", "rtn"] = "gptq"  # quantize: 4-bit rounding: GPTQ on calibration text, or round-to-nearest with clipping search
    int4_fallback: float | Literal["auto"] = 0.0  # quantize: share of the 4-bit weights (largest output error first) kept at 8 bits: 0.1 cost SmolLM2 4% of its decode speed, and more calibration text and the split LM head won more perplexity back (bench/results/int4-gap.md); auto: the first step of INT4_FALLBACK_LADDER whose 4-bit model keeps int4_tolerance and int4_sentiment_drop against the FP32 model on validation text
    int4_keep_8bit: list[str] = field(default_factory=list)  # quantize: in onnx-int4, the weights of the MatMuls whose node name ends with one of these stay at 8 bits, besides the int4_fallback share ([qkv, down_proj]: SmolLM2's attention inputs and FFN down projections, what auto found on validation reviews)
    int4_tolerance: float = 0.05  # quantize, int4_fallback auto: a 4-bit model's validation perplexity at most this fraction over the FP32 model's
    int4_sentiment_drop: float = 3.0  # quantize, int4_fallback auto: and its calibrated zero-shot sentiment accuracy on the validation split's movie reviews (sentiment_examples of them, half of each label) at most this many points under the FP32 model's
    lm_head_bits: int | None = 8  # quantize: bits of the output projection in the 4 / 8-bit formats; null keeps it FP32
    lm_head_rows: int | None = 16384  # quantize: in the 4-bit format only the output rows of token ids below this keep lm_head_bits, the rest take 4 bits (a BPE vocabulary lists its frequent tokens first: SmolLM2's first 16,384 ids are about 90% of the tokens of English text here); 0: the whole head at 4 bits; null: every row at lm_head_bits
    calibration_sequences: int = 128  # quantize: training sequences whose layer inputs GPTQ corrects for (SmolLM2 at 4 bits, no fallback, 4-bit LM head, out-of-domain perplexity over FP32: 1.116x with 32, 1.100x with 128)
    calibration_tokens: int = 128  # quantize: tokens per GPTQ calibration sequence (training texts packed back to back; at most the context): on SmolLM2 at 4 bits (32 sequences, 10% fallback), 128 gave 1.064x / 1.086x FP32 validation / out-of-domain perplexity, 256 1.101x / 1.103x (bench.int4_gap, 2026-12-06, in docs/benchmarks.md)
    default_tolerance: float = 0.01  # evaluate: the artifact's default model is the fastest whose validation perplexity is within this fraction of FP32's

    def validate(self, where: str) -> None:
        if not self.out_of_domain or len(set(self.out_of_domain)) != len(self.out_of_domain):
            raise ConfigError(f"{where}.out_of_domain = {self.out_of_domain}: list one or more sources, each once")
        if self.eval_texts < len(self.out_of_domain):
            raise ConfigError(f"{where}.eval_texts = {self.eval_texts} is split among {len(self.out_of_domain)} "
                              f"out-of-domain sources: at least one passage each")
        unknown = sorted(set(self.corpus_rows) - set(self.corpora))
        if unknown:
            raise ConfigError(f"{where}.corpus_rows names {unknown}, which {where}.corpora = {self.corpora} lacks")
        for name, rows in self.corpus_rows.items():
            check_range(f"{where}.corpus_rows.{name}", rows, low=1)
        check_range(f"{where}.teacher_samples", self.teacher_samples, low=0)
        check_range(f"{where}.sample_tokens", self.sample_tokens, low=1, high=512)
        check_range(f"{where}.sample_seed", self.sample_seed, low=0)
        check_range(f"{where}.pack_tokens", self.pack_tokens, low=2)
        check_range(f"{where}.token_budget", self.token_budget, low=1)
        check_range(f"{where}.eval_texts", self.eval_texts, low=1)
        check_range(f"{where}.agreement_texts", self.agreement_texts, low=0)
        check_range(f"{where}.sentiment_examples", self.sentiment_examples, low=0)
        check_range(f"{where}.decode_tokens", self.decode_tokens, low=2)
        check_range(f"{where}.decode_repeat", self.decode_repeat, low=1)
        check_range(f"{where}.eval_rows", self.eval_rows, low=1)
        check_range(f"{where}.max_steps", self.max_steps, low=1)
        check_range(f"{where}.budget_minutes", self.budget_minutes, low=0.0, low_open=True)
        check_range(f"{where}.recipe_minutes", self.recipe_minutes, low=0.0, low_open=True)
        if self.recipe_minutes is not None and self.budget_minutes is not None:
            raise ConfigError(f"{where}: budget_minutes = {self.budget_minutes} and recipe_minutes = "
                              f"{self.recipe_minutes} both bound distillation; set one (recipe_minutes: the whole "
                              "recipe, budget_minutes: training alone)")
        check_range(f"{where}.context_length", self.context_length, low=2)
        check_range(f"{where}.logits_atol", self.logits_atol, low=0.0)
        bad = [b for b in self.weight_bits if b not in (4, 8)]
        if bad or len(set(self.weight_bits)) != len(self.weight_bits):
            raise ConfigError(f"{where}.weight_bits = {self.weight_bits}: list 8 and / or 4, each once")
        sizes = [("block_size", self.block_size), ("block_size_8bit", self.block_size_8bit)]
        sizes += [(f"block_size_8bit_by_name.{key}", size) for key, size in self.block_size_8bit_by_name.items()]
        for name, size in sizes:
            if not isinstance(size, int) or size < 16 or size & (size - 1):
                raise ConfigError(f"{where}.{name} = {size!r}: a power of two >= 16 (16, 32, 64, 128)")
        if self.int4_fallback != "auto":
            check_range(f"{where}.int4_fallback", self.int4_fallback, low=0.0, high=1.0, high_open=True)
        if any(not isinstance(n, str) or not n for n in self.int4_keep_8bit):
            raise ConfigError(f"{where}.int4_keep_8bit = {self.int4_keep_8bit!r}: node-name suffixes such as qkv, "
                              "down_proj")
        check_range(f"{where}.int4_tolerance", self.int4_tolerance, low=0.0)
        check_range(f"{where}.int4_sentiment_drop", self.int4_sentiment_drop, low=0.0)
        if self.lm_head_bits not in (None, 4, 8):
            raise ConfigError(f"{where}.lm_head_bits = {self.lm_head_bits!r}: 4, 8 or null (FP32)")
        check_range(f"{where}.lm_head_rows", self.lm_head_rows, low=0)
        check_range(f"{where}.calibration_sequences", self.calibration_sequences, low=1)
        check_range(f"{where}.calibration_tokens", self.calibration_tokens, low=2)
        check_range(f"{where}.default_tolerance", self.default_tolerance, low=0.0)


@dataclass
class Recipe:
    """The whole pipeline. `teacher` and `task` are required; a stage set to null is skipped."""

    teacher: str  # Hugging Face folder, hub id, .gguf file, or embedded:all-MiniLM-L6-v2
    task: Task
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig | None = field(default_factory=FinetuneConfig)
    distill: DistillConfig | None = field(default_factory=DistillConfig)
    prune: PruneConfig | None = None
    quantize: QuantizeConfig | None = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    targets: list[str] = field(default_factory=list)  # device profiles from targets/; [] = generic CPU
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    causal_lm: CausalLMConfig | None = None  # text-generation only: student choice, LM text, decoder export

    def validate(self, where: str) -> None:
        needs_data = [n for n in ("finetune", "distill", "prune") if getattr(self, n) is not None]
        if self.quantize is not None and self.quantize.mode != "none":
            needs_data.append("quantize (calibration and validation)")
        if needs_data and self.data.empty and self.task != "text-generation":
            raise ConfigError(
                f"{where}: stage(s) {needs_data} need data, but the recipe has no data "
                "(set data.name, data.path or data.hf_dataset, or set those stages to null)"
            )
        if self.finetune is not None and self.finetune.extend_vocab is not None and self.task != "text-classification":
            raise ConfigError(f"{where}: finetune.extend_vocab needs task text-classification (the new embedding "
                              f"rows are learnt by fine-tuning), not {self.task!r}; remove it")
        if self.prune is not None and self.prune.recovery_alpha_hidden and self.task == "text-generation":
            raise ConfigError(f"{where}: prune.recovery_alpha_hidden is for encoders; causal-LM recovery uses "
                              "token-level KD only")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# Recipe fields a text-generation recipe must not set: each has no effect on a causal LM (or another field does
# the job, named here), so setting it is a ConfigError instead of a silently ignored line.
NOT_FOR_CAUSAL_LM = {
    "finetune": "a causal LM is distilled as it is (no task head to fine-tune); remove it or set finetune: null",
    "data.label_column": "text-generation reads text only",
    "distill.alpha_hidden": "causal-LM distillation is token-level KD (+ cross-entropy)",
    "distill.alpha_attention": "causal-LM distillation is token-level KD (+ cross-entropy)",
    "distill.embedding_loss": "it is for feature-extraction",
    "export.max_length": "use causal_lm.context_length",
    "export.atol": "use causal_lm.logits_atol",
    "export.trim_vocab": "vocabulary trimming is for encoders (an LM head over a trimmed vocabulary changes every "
                         "probability)",
    "export.vocab_texts": "vocabulary trimming is for encoders",
    "export.cls_only": "it is for encoder classifiers",
    "quantize.preset": "decoders get block-quantized weights (causal_lm.weight_bits, block_size)",
    "quantize.calibration_method": "static INT8 is not offered for decoders",
    "quantize.calibration_samples": "use causal_lm.calibration_sequences (GPTQ)",
    "quantize.per_channel": "use causal_lm.block_size",
    "quantize.reduce_range": "decoders get block-quantized weights",
    "quantize.fuse": "the fused decoder graph is causal_lm.graph",
    "quantize.quantize_embeddings": "decoders keep the embedding in FP16",
    "quantize.exclude": "decoders get block-quantized weights (causal_lm.int4_fallback keeps weights at 8 bits)",
    "quantize.tolerance": "use causal_lm.default_tolerance (the default model's perplexity budget)",
    "quantize.max_fallback": "use causal_lm.int4_fallback",
    "quantize.fp16": "decoders are exported in FP32 and block-quantized",
    "evaluate.repeat": "use causal_lm.decode_repeat (timed generations)",
}


def _check_applicable(data: dict[str, Any], where: str) -> None:
    """ConfigError naming the first field given that the recipe's task does not use."""
    task = data.get("task")
    if task != "text-generation":
        if data.get("causal_lm") is not None:
            raise ConfigError(f"{where}: causal_lm applies to task text-generation only, not {task!r}; remove it")
        return
    for dotted, why in NOT_FOR_CAUSAL_LM.items():
        section, _, key = dotted.partition(".")
        node = data.get(section)
        given = (section in data and node is not None) if not key else (isinstance(node, dict) and key in node)
        if given:
            raise ConfigError(f"{where}: {dotted} does not apply to text-generation: {why}")


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    if isinstance(data, dict):
        _check_applicable(data, where)
        if data.get("task") == "text-generation":
            data = {**data, "finetune": None, "causal_lm": data.get("causal_lm") or {}}
    return from_dict(Recipe, data, where)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides (values parsed as YAML: 3, 0.5, null, [0, 2], text) to a recipe dict."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. distill.epochs=1)")
        value = _parse_yaml(raw, f"override {item!r}: the value") if raw.strip() else None
        node = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def _parse_yaml(text: str, what: str) -> Any:
    """yaml.safe_load with every failure as a ConfigError: syntax, values its constructors refuse (a date
    2020-99-99, an integer of over 4,300 digits) and nesting too deep to parse."""
    import yaml

    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{what}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{what}: not valid YAML: nested too deeply to parse") from None


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Read and validate a YAML recipe (with `dotted.key=value` overrides); errors name the file and the field."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"recipe file {str(file)!r} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the recipe as UTF-8") from exc
    data = _parse_yaml(text, str(file))
    if data is None:
        raise ConfigError(f"{file}: the recipe is empty; it needs at least teacher and task")
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: a recipe is a mapping of stages, not a {type(data).__name__}")
    return recipe_from_dict(apply_overrides(data, overrides), where=file.name)
