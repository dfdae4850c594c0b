"""The text-generation stages of `edgellm compress` (`edgellm.pipeline.compress` runs them for causal-LM recipes).

The same stage cache as the encoder tasks (`WORK/<stage>-<key>/stage.json`, reused when unchanged, resumed when
interrupted), one stage after another, each skipped when null in the recipe:

    teacher   the teacher as a Hugging Face folder + its fused ONNX Runtime models (FP32, 8-bit weights): the
              reference every later number is compared with, in the same run
    baseline  the teacher's runtime models measured as evaluate measures every model (quality; their speed is timed
              in evaluate's rounds, beside the student's): once, so a new student re-scores none of them
    corpus    causal_lm.teacher_samples texts the teacher writes from diverse prompts (seeded), in that runtime
    distill   student from the teacher's layers, token-level KD on the training split (+ corpus, augment_with)
    prune     heads per KV group, FFN neurons, whole layers (edgellm.prune), with recovery KD
    export    fused ONNX Runtime graph and stateful OpenVINO IR in FP32, checked against torch; one per --target
    quantize  8 / 4-bit block-quantized weights, plain-graph INT8, NNCF INT8 / INT4 weights
    evaluate  every model through the runtime (the teacher's scores from baseline): perplexity on the validation
              split, the test split (in-domain) and causal_lm.out_of_domain text (never trained on), KL and top-1
              agreement with the FP32 teacher, zero-shot sentiment accuracy by prompting; then decode tokens/s and
              time to the first token, every model and the teacher's timed in turn in the same rounds (a drifting
              machine slows them alike); the default model is the fastest so measured of those within
              causal_lm.default_tolerance of FP32 on validation perplexity

Test numbers are measured once, after every choice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from edgellm.artifact import read_manifest, write_manifest
from edgellm.config import to_dict
from edgellm.errors import ConfigError, DataError
from edgellm.evaluate import SENTIMENT_LABELS
from edgellm.pipeline import (
    CompressResult,
    StageCache,
    StageRecord,
    _copy_artifact,
    _fresh,
    _publish,
    fingerprint_path,
    fmt,
)
from edgellm.recipe import INT4_FALLBACK_LADDER, CausalLMConfig, Recipe

__all__ = ["compress_causal_lm", "TRAINING_FIELDS", "lm_texts", "load_out_of_domain", "pack_sequences", "scoring_sets",
           "ood_passages", "ood_sets", "pooled_perplexity", "check_lm_targets", "measure_lm", "plan_recipe_time",
           "decode_share"]

log = logging.getLogger(__name__)

# causal_lm fields the distillation depends on (the others change export / quantize / evaluate only, so that
# changing them reuses the distilled student)
TRAINING_FIELDS = ("layer_selection", "width_selection", "corpora", "corpus_rows", "freeze_embeddings",
                   "teacher_precision", "eval_rows", "max_steps", "budget_minutes", "recipe_minutes", "token_budget",
                   "sample_tokens", "pack_tokens", "corpus_chat")
CORPUS_FILE = "corpus.jsonl"
OOD_LENGTH = 256  # tokens per out-of-domain passage (consecutive texts packed back to back; the context at most)
OOD_SET = "out_of_domain"  # scoring_sets names one set per out-of-domain source "out_of_domain:SOURCE"


def lm_texts(recipe: Recipe) -> tuple[Any, dict[str, list[str]]]:
    """A text-generation recipe's text: its data and causal_lm.corpora merged and split (`load_lm_data`), and its
    out-of-domain texts by source (`load_out_of_domain`: refused if they touch the others)."""
    from edgellm.train.causal import load_lm_data

    lm = recipe.causal_lm or CausalLMConfig()
    data = load_lm_data(recipe.data, corpora=lm.corpora, corpus_rows=lm.corpus_rows)
    return data, load_out_of_domain(lm.out_of_domain, [*data.train.texts, *data.validation.texts, *data.test.texts])


def load_out_of_domain(sources: Sequence[str], train_texts: Sequence[str]) -> dict[str, list[str]]:
    """The out-of-domain texts of each of `sources` (built-in names, files, hf:NAME), by source; a source sharing a
    text with the training text is refused: it would not be out of domain."""
    from edgellm.data import load_texts

    seen = set(train_texts)
    texts: dict[str, list[str]] = {}
    for source in sources:
        rows = load_texts(source)
        shared = sum(1 for t in rows if t in seen)
        if shared:
            raise DataError(f"causal_lm.out_of_domain {source!r} shares {shared} texts with the training text; "
                            "out-of-domain text must never touch training (drop it from corpora / data)")
        texts[source] = rows
    return texts


def ood_passages(tokenizer: Any, ood: dict[str, list[str]], *, length: int, count: int) -> dict[str, list[list[int]]]:
    """`count` passages of `length` tokens (`pack_sequences`) split evenly among the out-of-domain sources (the
    first sources take the remainder), by source: each source is scored on its own and pooled
    (`pooled_perplexity`), so a second source costs no extra scoring."""
    share, extra = divmod(count, max(len(ood), 1))
    parts = {name: pack_sequences(tokenizer, texts, length=length, count=share + (i < extra))
             for i, (name, texts) in enumerate(ood.items())}
    short = [name for name, passages in parts.items() if not passages]
    if short:
        raise DataError(f"causal_lm.out_of_domain {short}: too little text for one {length}-token passage")
    return parts


def interleaved(parts: dict[str, list[list[int]]]) -> list[list[int]]:
    """The passages of every source, taking one of each in turn (a prefix samples every source)."""
    lists = list(parts.values())
    return [p[i] for i in range(max((len(p) for p in lists), default=0)) for p in lists if i < len(p)]


def pooled_perplexity(parts: dict[str, dict[str, float]]) -> float:
    """exp(mean NLL per token) over every source's tokens, from each source's `perplexity` result
    ({"nll_per_token", "tokens"}): the perplexity of all the passages scored together."""
    tokens = sum(p["tokens"] for p in parts.values())
    if not tokens:
        raise DataError("no out-of-domain token to score")
    return math.exp(sum(p["nll_per_token"] * p["tokens"] for p in parts.values()) / tokens)


def ood_sets(sets: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
    """The out-of-domain sets of `scoring_sets`, by source ("out_of_domain:SOURCE" -> SOURCE)."""
    prefix = f"{OOD_SET}:"
    return {name[len(prefix):]: seqs for name, seqs in sets.items() if name.startswith(prefix)}


def scoring_sets(tokenizer: Any, data: Any, ood: dict[str, list[str]], *, count: int,
                 context: int) -> dict[str, list[list[int]]]:
    """The token sequences the evaluate stage scores: up to `count` validation and test (in-domain) texts, each cut
    to the data's max_length, and `count` out-of-domain passages of OOD_LENGTH tokens (at most `context`), split
    among the sources, one set "out_of_domain:SOURCE" each (`ood_passages`; `measure_lm` pools them).
    `tokenizer`: a `tokenizers.Tokenizer` whose encoding adds the model's special tokens."""
    length = int(data.max_length or 128)
    return {
        "validation": encode_rows(tokenizer, data.validation.texts[:count], length),
        "in_domain": encode_rows(tokenizer, data.test.texts[:count], length),
        **{f"{OOD_SET}:{name}": passages for name, passages in
           ood_passages(tokenizer, ood, length=min(OOD_LENGTH, context), count=count).items()},
    }


def encode_rows(tokenizer: Any, texts: Sequence[str], length: int) -> list[list[int]]:
    """Each text's token ids (a `tokenizers.Tokenizer` adding the model's special tokens), cut to `length`; texts of
    fewer than 2 tokens (nothing to predict) left out."""
    return [ids[:length] for ids in (e.ids for e in tokenizer.encode_batch(list(texts))) if len(ids) > 1]


def pack_sequences(tokenizer: Any, texts: Sequence[str], *, length: int, count: int) -> list[list[int]]:
    """Up to `count` passages of `length` tokens: `texts` in order, joined by spaces, cut into whole passages.
    `tokenizer`: a `tokenizers.Tokenizer` (or a transformers fast tokenizer, whose backend is used)."""
    from edgellm.runtime.text import plain_tokenizer

    tok = plain_tokenizer(tokenizer)
    out: list[list[int]] = []
    ids: list[int] = []
    for text in texts:
        ids += tok.encode(" " + text.strip(), add_special_tokens=False).ids
        while len(ids) >= length and len(out) < count:
            out.append(ids[:length])
            ids = ids[length:]
        if len(out) >= count:
            break
    return out


def check_lm_targets(targets: Sequence[str]) -> list[Any]:
    """The device profiles a decoder can be built for; a profile it cannot is a ConfigError before any work."""
    from edgellm.targets import load_target

    profiles = []
    for name in targets:
        profile = load_target(name)
        if profile.static_shape is not None:
            raise ConfigError(f"target {name}: static_shape {profile.static_shape} cannot hold a decoder's growing "
                              "KV cache; text-generation targets need dynamic shapes")
        if profile.backend == "onnxruntime" and profile.precision != "fp32":
            raise ConfigError(f"target {name}: the fused ONNX Runtime decoder is exported in FP32 (8-bit weights by "
                              f"the quantize stage); {profile.precision} decoders are not built yet")
        profiles.append(profile)
    return profiles


def compress_causal_lm(recipe: Recipe, out: Path, work: Path, targets: Sequence[str], *, overwrite: bool,
                       progress: bool, say: Callable[[str], None]) -> CompressResult:
    """Run a text-generation recipe through the stage cache (see the module docstring) and publish the artifact."""
    from edgellm import __version__
    from edgellm.models import resolve_model
    from edgellm.train.corpus import read_corpus

    lm = recipe.causal_lm or CausalLMConfig()
    profiles = check_lm_targets(targets)
    if lm.recipe_minutes is not None and (recipe.distill is None or recipe.prune is not None):
        raise ConfigError(f"causal_lm.recipe_minutes = {lm.recipe_minutes} sets distillation's training time from "
                          "what the other stages take; " + ("the recipe has no distill stage" if recipe.distill is None
                                                            else "a prune stage's recovery training is not predicted")
                          + ": use causal_lm.budget_minutes")
    data, ood = lm_texts(recipe)
    described = data.describe()
    say(f"[data] {', '.join(lm.corpora) or 'data'}: {described['split']['sizes']} rows (seed {data.split.seed}); "
        f"out of domain: {', '.join(f'{name} ({len(texts)} texts)' for name, texts in ood.items())}")
    cache = StageCache(work, say)
    base = {"edgellm": __version__, "task": recipe.task, "data": described["split"]["sha256"],
            "max_length": data.max_length, "out_of_domain": list(lm.out_of_domain)}
    training = {k: getattr(lm, k) for k in TRAINING_FIELDS}
    if recipe.distill is None or recipe.distill.ffn_size is None:
        del training["width_selection"]  # it only chooses FFN neurons when the student's FFN is narrower
    export_fields = {k: getattr(lm, k) for k in ("context_length", "stateful", "logits_atol", "graph")}
    stages: dict[str, StageRecord] = {}
    teacher_path = resolve_model(recipe.teacher)
    stages["teacher"] = teacher = cache.run(
        "teacher", {**base, "teacher": recipe.teacher, "files": fingerprint_path(teacher_path),
                    "export": export_fields, "eval_texts": lm.eval_texts,
                    # its 8-bit runtime model (baseline's reference, corpus's writer) is made with these
                    "weights_8bit": _teacher_weights(lm).eight_bit_settings()},
        lambda folder: _teacher_stage(recipe, lm, data, ood, folder))
    scoring = {**{k: getattr(lm, k) for k in ("eval_texts", "agreement_texts", "sentiment_examples")},
               "sentiment_rows": "label-balanced"}  # `balanced_rows`: was the split's first rows
    stages["baseline"] = baseline = cache.run(
        "baseline", {**base, "input": teacher.key, "threads": recipe.evaluate.threads, "causal_lm": scoring,
                     "decode": [recipe.evaluate.latency_length, lm.decode_tokens]},
        lambda folder: _baseline_stage(recipe, lm, data, ood, teacher.folder))
    current = teacher
    corpus: list[dict[str, Any]] = []
    if lm.teacher_samples:
        stages["corpus"] = cache.run(
            "corpus", {"teacher": teacher.key, "samples": lm.teacher_samples, "tokens": lm.sample_tokens,
                       "seed": lm.sample_seed},
            lambda folder: _corpus_stage(lm, teacher.folder, folder))
        corpus = read_corpus(stages["corpus"].folder / CORPUS_FILE)
    if recipe.distill is not None:
        stages["distill"] = current = cache.run(
            "distill", {**base, "input": teacher.key, "corpus": stages["corpus"].key if "corpus" in stages else None,
                        "distill": to_dict(recipe.distill), "causal_lm": training},
            lambda folder: _distill_stage(recipe, lm, data, ood, corpus, teacher.folder, folder, progress,
                                          time_plan=None if lm.recipe_minutes is None else
                                          plan_recipe_time(recipe, lm, stages, profiles)))
    if recipe.prune is not None:
        source = current.folder / "model"
        stages["prune"] = current = cache.run(
            "prune", {**base, "input": current.key, "prune": to_dict(recipe.prune), "distill": to_dict(recipe.distill)},
            lambda folder: _prune_stage(recipe, lm, data, ood, source, teacher.folder, folder, progress))
    model_folder = current.folder / "model"
    stages["export"] = current = cache.run(
        "export", {**base, "input": current.key, "export": to_dict(recipe.export), "causal_lm": export_fields,
                   "targets": list(targets)},
        lambda folder: _export_stage(recipe, lm, data, model_folder, profiles, folder))
    if recipe.quantize is not None and recipe.quantize.mode != "none":
        source = current.folder
        stages["quantize"] = current = cache.run(
            "quantize", {**base, "input": current.key, "quantize": to_dict(recipe.quantize),
                         "causal_lm": {k: getattr(lm, k) for k in ("weight_bits", "block_size", "block_size_8bit",
                                                                    "block_size_8bit_by_name", "int4_method",
                                                                    "int4_fallback", "lm_head_bits", "lm_head_rows",
                                                                    "calibration_sequences", "calibration_tokens")},
                         **({"int4_keep_8bit": lm.int4_keep_8bit} if lm.int4_keep_8bit else {}),
                         **({"int4_search": {"ladder": [[list(n), f] for n, f in INT4_FALLBACK_LADDER],
                                             **{k: getattr(lm, k) for k in ("int4_tolerance", "int4_sentiment_drop",
                                                                            "eval_texts", "sentiment_examples")}}}
                            if lm.int4_fallback == "auto" else {})},
            lambda folder: _quantize_stage(recipe, lm, data, model_folder, source, folder))
    source = current.folder / "artifact"
    stages["evaluate"] = current = cache.run(
        "evaluate", {**base, "input": current.key, "teacher": teacher.key, "baseline": baseline.key,
                     "evaluate": to_dict(recipe.evaluate),
                     "causal_lm": {**scoring, **{k: getattr(lm, k) for k in ("decode_tokens", "decode_repeat",
                                                                              "default_tolerance")}}},
        lambda folder: _evaluate_stage(recipe, lm, data, ood, source, teacher.folder, baseline.metrics, folder))
    summary = lm_summary_rows(stages, read_manifest(current.folder / "artifact"))
    manifest = _publish(recipe, data, current.folder / "artifact", out, stages, summary, overwrite=overwrite)
    say(f"wrote {out} (default model {manifest.default_model}); stage outputs kept in {work}")
    return CompressResult(manifest=manifest, output=out, work_dir=work, summary=summary, stages=stages)


# --- stages ---------------------------------------------------------------------------------------------------------

def _torch_lm_metrics(folder: Path, data: Any, ood: dict[str, list[str]], lm: CausalLMConfig, *,
                      teacher: Any = None) -> dict[str, Any]:
    """Parameters, size, and PyTorch FP32 perplexity on the test split and the out-of-domain passages (pooled, and
    by source), and KL from the teacher, of the model saved in `folder`."""
    from edgellm.exporting.decoder import context_length_for
    from edgellm.models import count_parameters
    from edgellm.train.causal import _pad_id, encode_lm, lm_kl, lm_perplexity, load_teacher_lm

    tm = load_teacher_lm(folder)
    pad = _pad_id(tm.tokenizer, tm.model)
    test = encode_lm(tm.tokenizer, data.test.texts[: lm.eval_texts], int(data.max_length or 128))
    passage = min(OOD_LENGTH, context_length_for(tm.model, lm.context_length))
    parts = ood_passages(tm.tokenizer, ood, length=passage, count=lm.eval_texts)
    scored = {name: lm_perplexity(tm.model, p, pad_id=pad, batch_size=4) for name, p in parts.items()}
    out: dict[str, Any] = {
        "parameters": count_parameters(tm.model), "layers": int(tm.model.config.num_hidden_layers),
        "size_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
        "perplexity_in_domain": lm_perplexity(tm.model, test, pad_id=pad)["perplexity"],
        "perplexity_out_of_domain": pooled_perplexity(scored),
        "perplexity_out_of_domain_by_source": {name: r["perplexity"] for name, r in scored.items()},
        "texts": {"in_domain": len(test), "out_of_domain": sum(len(p) for p in parts.values()),
                  "out_of_domain_by_source": {name: len(p) for name, p in parts.items()},
                  "out_of_domain_tokens": passage},
    }
    if teacher is not None and lm.agreement_texts:  # the evaluate stage's set: half in-domain, half out-of-domain
        half = lm.agreement_texts // 2
        agreement = [*test[:half], *interleaved(parts)[: lm.agreement_texts - half]]
        out["kl_from_teacher"] = lm_kl(teacher.model, tm.model, agreement, pad_id=pad, batch_size=4)
    return out


def _teacher_weights(lm: CausalLMConfig) -> Any:
    """The weight formats of the teacher stage's runtime models: the recipe's, 8-bit only."""
    from edgellm.quantize.decoder import WeightFormats

    return dataclasses.replace(WeightFormats.from_config(lm), bits=(8,))


def _teacher_stage(recipe: Recipe, lm: CausalLMConfig, data: Any, ood: dict[str, list[str]],
                   folder: Path) -> dict[str, Any]:
    """The teacher as a Hugging Face folder (`model/`) and as a fused ONNX Runtime artifact (`runtime/`: onnx-fp32
    checked against torch, onnx-int8), measured the way every later stage is."""
    from edgellm.quantize.decoder import export_causal_lm
    from edgellm.train.causal import load_teacher_lm

    tm = load_teacher_lm(recipe.teacher)
    tm.save(folder / "model", overwrite=True)
    started = time.perf_counter()
    export_causal_lm(tm.model, folder / "runtime", tokenizer=tm.tokenizer, formats=("onnx",), graph=lm.graph,
                     weights=_teacher_weights(lm),
                     context_length=lm.context_length, atol=lm.logits_atol, texts=list(data.validation.texts[:8]),
                     source=recipe.teacher, overwrite=True, default_tolerance=lm.default_tolerance)
    exported = time.perf_counter()
    metrics = _torch_lm_metrics(folder / "model", data, ood, lm)
    # what recipe_minutes predicts the later stages from (plan_recipe_time)
    metrics["phase_seconds"] = {"export": round(exported - started, 1),
                                "scoring": round(time.perf_counter() - exported, 1)}
    return metrics


def _corpus_stage(lm: CausalLMConfig, teacher_folder: Path, folder: Path) -> dict[str, Any]:
    """causal_lm.teacher_samples replies of the teacher's 8-bit runtime model to seeded prompts, as JSON lines."""
    from edgellm.artifact import atomic_write_text
    from edgellm.runtime import load
    from edgellm.train.corpus import SAMPLING, generate_corpus, teacher_prompts

    generator = load(teacher_folder / "runtime", model="onnx-int8", verify=False)
    prompts = teacher_prompts(lm.teacher_samples, lm.sample_seed)
    started = time.perf_counter()
    rows = generate_corpus(generator, prompts, max_new_tokens=lm.sample_tokens, seed=lm.sample_seed)
    seconds = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in rows)
    atomic_write_text(folder / CORPUS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"texts": len(rows), "prompts": len(prompts), "tokens": tokens, "seconds": round(seconds, 1),
            "tokens_per_s": tokens / seconds if seconds else None, "model": "teacher onnx-int8 (edgellm runtime)",
            "sampling": {**SAMPLING, "seed": lm.sample_seed, "max_new_tokens": lm.sample_tokens}}


def _distill_stage(recipe: Recipe, lm: CausalLMConfig, data: Any, ood: dict[str, list[str]],
                   corpus: Sequence[dict[str, Any]], teacher_folder: Path, folder: Path,
                   progress: bool, time_plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The distilled student (`model/`) and its PyTorch numbers; under causal_lm.recipe_minutes it trains for
    `time_plan`'s minutes (`plan_recipe_time`), and the plan is recorded."""
    from edgellm.train.causal import distill_causal_lm, load_teacher_lm
    from edgellm.train.corpus import corpus_texts
    from edgellm.train.stages import augment_texts

    if time_plan is not None:
        lm = dataclasses.replace(lm, budget_minutes=time_plan["train_minutes"])
    teacher = load_teacher_lm(teacher_folder / "model")
    extra = [*corpus_texts(corpus, teacher.tokenizer, chat=lm.corpus_chat),
             *augment_texts(recipe.distill.augment_with, data,  # type: ignore[union-attr]
                            exclude=[t for texts in ood.values() for t in texts])]
    student = distill_causal_lm(teacher, data, recipe.distill, lm, folder / "work",  # type: ignore[arg-type]
                                extra_texts=extra, progress=progress)
    student.save(folder / "model", overwrite=True)
    out = {"training": student.metrics, **_torch_lm_metrics(folder / "model", data, ood, lm, teacher=teacher)}
    return out if time_plan is None else {**out, "recipe_time": time_plan}


def _prune_stage(recipe: Recipe, lm: CausalLMConfig, data: Any, ood: dict[str, list[str]], source: Path,
                 teacher_folder: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from edgellm.prune import prune
    from edgellm.recipe import DistillConfig
    from edgellm.train.causal import load_teacher_lm

    report = prune(source, folder / "model", config=recipe.prune, data=data, task="text-generation",
                   distill=recipe.distill or DistillConfig(), work_dir=folder / "work", overwrite=True,
                   progress=progress)
    teacher = load_teacher_lm(teacher_folder / "model")
    return {"report": report, **_torch_lm_metrics(folder / "model", data, ood, lm, teacher=teacher)}


def _export_stage(recipe: Recipe, lm: CausalLMConfig, data: Any, model_folder: Path, profiles: Sequence[Any],
                  folder: Path) -> dict[str, Any]:
    """FP32 decoder models (checked against torch) + one per target profile; the plain graph and the torch
    references stay beside the artifact for the quantize stage."""
    from edgellm.exporting.decoder import check_prompts, context_length_for, decoder_manifest, write_decoder_models
    from edgellm.train.causal import load_teacher_lm

    tm = load_teacher_lm(model_folder)
    model = tm.model.eval()
    length = context_length_for(model, lm.context_length)
    artifact = _fresh(folder / "artifact")
    tm.tokenizer.backend_tokenizer.save(str(artifact / "tokenizer.json"))
    prompts = check_prompts(tm.tokenizer, data.validation.texts)
    export = write_decoder_models(model, tm.tokenizer, artifact, prompts=prompts, formats=recipe.export.formats,
                                  graph=lm.graph, context_length=length, atol=lm.logits_atol, stateful=lm.stateful,
                                  keep_plain=folder / "plain" / "model.onnx")
    manifest = decoder_manifest(model, export, context_length=length, source=recipe.teacher)
    for profile in profiles:
        manifest.models.append(_target_entry(artifact, manifest, profile))
    manifest.metrics["export"] = {e.name: e.metrics for e in manifest.models}
    write_manifest(artifact, manifest)
    return {e.name: e.metrics for e in manifest.models}


def _target_entry(artifact: Path, manifest: Any, profile: Any) -> Any:
    """A copy of the FP32 model of the profile's engine, named and tagged for the target (the quantize stage applies
    the profile's quantization to it); the profile goes into the artifact for the runtime's device choice."""
    import shutil

    from edgellm.targets import profile_file_name

    engine = "onnx-fp32" if profile.backend == "onnxruntime" else "openvino-fp32"
    try:
        source = manifest.model(engine)
    except Exception as exc:
        raise ConfigError(f"target {profile.name} runs on {profile.backend}: add its format to export.formats") \
            from exc
    files = []
    for name in source.files:
        dst = f"{profile.name}-{name}"
        shutil.copyfile(artifact / name, artifact / dst)
        files.append(dst)
    profile_file = profile_file_name(profile.name)
    (artifact / profile_file).write_text(json.dumps(profile.to_dict(), indent=2) + "\n", encoding="utf-8")
    entry = dataclasses.replace(source, name=profile.name, path=f"{profile.name}-{source.path}",
                                files=[*files, profile_file], target=profile.name,
                                inference_precision=profile.inference_precision or source.inference_precision,
                                metrics=dict(source.metrics))
    return entry


def _quantize_stage(recipe: Recipe, lm: CausalLMConfig, data: Any, model_folder: Path, source: Path,
                    folder: Path) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from edgellm.exporting.decoder import check_prompts, torch_references
    from edgellm.quantize.decoder import (
        Int4Check,
        WeightFormats,
        calibration_sequences,
        decoder_quantize_modes,
        quantize_decoder_models,
        quantize_target_decoder,
    )
    from edgellm.runtime.text import plain_tokenizer
    from edgellm.train.causal import load_teacher_lm

    artifact = _copy_artifact(source / "artifact", folder / "artifact")
    manifest = read_manifest(artifact)
    tm = load_teacher_lm(model_folder)
    model = tm.model.eval()
    modes, openvino = decoder_quantize_modes(recipe.quantize)
    weights = WeightFormats.from_config(lm)
    if "onnxruntime" not in recipe.quantize.backends:  # type: ignore[union-attr]
        weights = dataclasses.replace(weights, bits=())
    references = torch_references(model, check_prompts(tm.tokenizer, data.validation.texts),
                                  context_length=manifest.max_length)
    calibration = calibration_sequences(tm.tokenizer, data.train.texts, count=lm.calibration_sequences,
                                        length=min(manifest.max_length, lm.calibration_tokens)) \
        if 4 in weights.bits and weights.int4_method == "gptq" else []
    check = None
    if 4 in weights.bits and weights.int4_fallback == "auto":  # judged on validation rows, as the default model is
        tok = plain_tokenizer(Tokenizer.from_file(str(artifact / manifest.tokenizer)))
        check = Int4Check(encode_rows(tok, data.validation.texts[: lm.eval_texts], int(data.max_length or 128)),
                          _sentiment_rows(data, lm.sentiment_examples, split="validation"),
                          tolerance=lm.int4_tolerance, sentiment_drop=lm.int4_sentiment_drop)
    plain = source / "plain" / "model.onnx"
    added = quantize_decoder_models(artifact, manifest, references, plain=plain if plain.is_file() else None,
                                    modes=modes, weights=weights, calibration=calibration, openvino=openvino,
                                    int4_check=check)
    for entry in [e for e in manifest.models if e.target]:
        added.append(quantize_target_decoder(artifact, manifest, entry, references,
                                               weights=weights))
    manifest.metrics["quantize"] = {e.name: e.metrics for e in added}
    write_manifest(artifact, manifest)
    return dict(manifest.metrics["quantize"])


class _Scoring:
    """What every runtime model of a recipe is scored on, alike in the baseline and evaluate stages: the token sets
    (`scoring_sets`), the KL / top-1 agreement set (half in-domain, half out-of-domain), the sentiment rows, and the
    FP32 teacher's runtime model as the agreement reference."""

    def __init__(self, recipe: Recipe, lm: CausalLMConfig, data: Any, ood: dict[str, list[str]], tokenizer_file: Path,
                 max_length: int, teacher_folder: Path) -> None:
        from tokenizers import Tokenizer

        from edgellm.runtime import load
        from edgellm.runtime.text import plain_tokenizer

        self.tok = plain_tokenizer(Tokenizer.from_file(str(tokenizer_file)))
        self.sets = scoring_sets(self.tok, data, ood, count=lm.eval_texts, context=max_length)
        half = lm.agreement_texts // 2
        self.agreement_set = [*self.sets["in_domain"][:half],
                              *interleaved(ood_sets(self.sets))[: lm.agreement_texts - half]]
        self.sentiment = _sentiment_rows(data, lm.sentiment_examples)
        self.threads = recipe.evaluate.threads
        self.teacher_folder = teacher_folder
        self.reference = load(teacher_folder / "runtime", model="onnx-fp32", threads=self.threads, verify=False)

    def measure(self, model: Any) -> dict[str, Any]:
        return measure_lm(model, self.sets, reference=self.reference, agreement_set=self.agreement_set,
                          sentiment=self.sentiment)

    def teacher_models(self) -> dict[str, Any]:
        """The teacher's runtime models, loaded (the agreement reference is its FP32 one), by summary name."""
        from edgellm.runtime import load

        return {f"teacher {e.name}": self.reference if e.name == "onnx-fp32" else
                load(self.teacher_folder / "runtime", model=e.name, threads=self.threads, verify=False)
                for e in read_manifest(self.teacher_folder / "runtime").models}

    def counts(self) -> dict[str, Any]:
        by_source = {name: len(seqs) for name, seqs in ood_sets(self.sets).items()}
        texts = {name: len(self.sets[name]) for name in ("validation", "in_domain")}
        return {"texts": {**texts, OOD_SET: sum(by_source.values()), f"{OOD_SET}_by_source": by_source},
                "sentiment_examples": len(self.sentiment[0])}


def _baseline_stage(recipe: Recipe, lm: CausalLMConfig, data: Any, ood: dict[str, list[str]],
                    teacher_folder: Path) -> dict[str, Any]:
    """The teacher's runtime models scored as the evaluate stage scores every model (`_Scoring`), with the seconds
    each took."""
    runtime = teacher_folder / "runtime"
    manifest = read_manifest(runtime)
    scoring = _Scoring(recipe, lm, data, ood, runtime / manifest.tokenizer, manifest.max_length, teacher_folder)
    precision = {f"teacher {e.name}": e.precision for e in manifest.models}
    prompt = _decode_prompt(scoring.tok, data, recipe.evaluate.latency_length)
    models = {}
    for name, model in scoring.teacher_models().items():
        models[name] = record = {"teacher": True, "precision": precision[name], **scoring.measure(model)}
        started = time.perf_counter()  # one generation as evaluate times them (recipe_minutes predicts from it)
        list(lm_stream(model)(prompt, lm.decode_tokens))
        record["seconds"]["generation"] = round(time.perf_counter() - started, 4)
    return {"models": models, **scoring.counts()}


def _evaluate_stage(recipe: Recipe, lm: CausalLMConfig, data: Any, ood: dict[str, list[str]], source: Path,
                    teacher_folder: Path, baseline: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Every model of the artifact scored (module docstring), the teacher's scores taken from the baseline stage,
    then every model and the teacher's timed in the same rounds; the default model is the fastest (measured decode
    tokens/s, when latency is timed) within causal_lm.default_tolerance of FP32 on validation perplexity."""
    from edgellm.bench.generation import measure_generation_interleaved
    from edgellm.quantize.decoder import choose_default
    from edgellm.runtime import load

    artifact = _copy_artifact(source, folder / "artifact")
    manifest = read_manifest(artifact)
    scoring = _Scoring(recipe, lm, data, ood, artifact / manifest.tokenizer, manifest.max_length, teacher_folder)
    if scoring.counts() != {k: baseline.get(k) for k in ("texts", "sentiment_examples")}:
        raise DataError(f"the baseline stage scored the teacher on {baseline.get('texts')} texts, the student's "
                        f"artifact gives {scoring.counts()['texts']}: their tokenizers or context lengths differ")
    results: dict[str, Any] = {name: dict(record) for name, record in baseline["models"].items()}
    loaded: dict[str, Any] = {}
    for entry in manifest.models:
        model = loaded[entry.name] = load(artifact, model=entry.name, threads=scoring.threads, verify=False,
                                          device="auto")
        record = scoring.measure(model)
        record["device"] = model.describe().get("device")
        entry.metrics["test"] = {k: record[k] for k in ("perplexity_in_domain", "perplexity_out_of_domain",
                                                        "perplexity_out_of_domain_by_source", "kl_from_teacher",
                                                        "top1_agreement", "sentiment")
                                 if k in record}
        entry.metrics["validation"] = {"perplexity": record["perplexity_validation"]}
        results[entry.name] = record
    prompt = _decode_prompt(scoring.tok, data, recipe.evaluate.latency_length)
    if recipe.evaluate.latency:
        loaded = {**scoring.teacher_models(), **loaded}  # the teacher's first, as in the summary
        timed = measure_generation_interleaved({name: lm_stream(m) for name, m in loaded.items()}, prompt,
                                               max_new_tokens=lm.decode_tokens, warmup=1, repeat=lm.decode_repeat)
        for name, record in timed.items():
            results[name]["generation"] = record
        for entry in manifest.models:
            entry.metrics["generation"] = timed[entry.name]
    default, why = choose_default(manifest.models, lm.default_tolerance, what="validation ",
                                  perplexity=lambda e: (e.metrics.get("validation") or {}).get("perplexity"),
                                  speed=lambda e: (e.metrics.get("generation") or {}).get("decode_tokens_per_s"))
    manifest.default_model = default
    manifest.metrics["default_model"] = {"name": default, "reason": why}
    write_manifest(artifact, manifest)
    return {"models": results, "default_model": {"name": default, "reason": why}, **scoring.counts(),
            "decode_prompt_tokens": len(prompt)}


def _sentiment_rows(data: Any, count: int, *, split: str = "test") -> tuple[list[str], list[int]]:
    """Up to `count` movie reviews of this recipe's own held-out `split` ("test"; "validation" for choices) with their
    binary label (reviews of a neutral score have none), text the model never trained on: as many of each label as
    the split allows, up to half of `count` each (`balanced_rows`), in the order of the split."""
    if count == 0:
        return [], []
    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig

    labelled = load_task_data(DataConfig(name="movie-reviews", split=data.split), task="text-classification")
    names = list(labelled.labels or [])
    if sorted(names) != sorted(SENTIMENT_LABELS):
        raise DataError(f"movie-reviews labels {names} are not {list(SENTIMENT_LABELS)}")
    label_of = {t: names[y] for part in (labelled.train, labelled.validation, labelled.test)
                for t, y in zip(part.texts, part.labels)}
    train = set(data.train.texts)
    rows = [(t, SENTIMENT_LABELS.index(label_of[t])) for t in getattr(data, split).texts
            if t in label_of and t not in train]
    rows = balanced_rows(rows, count)
    return [t for t, _ in rows], [y for _, y in rows]


def balanced_rows(rows: Sequence[tuple[str, int]], count: int) -> list[tuple[str, int]]:
    """`count` of `rows` (text, label), in their order, with the labels as even as the rows allow: each label gets
    an equal share, a label short of its share gives the rest to the others. The first rows of a split are often one
    label (movie-reviews' test split starts with 198 positive reviews in its first 200)."""
    by_label: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(rows):
        by_label.setdefault(label, []).append(i)
    share = dict.fromkeys(by_label, 0)
    left = min(count, len(rows))
    while left:
        for label, members in sorted(by_label.items()):
            if left and share[label] < len(members):
                share[label] += 1
                left -= 1
    keep = {i for label, members in by_label.items() for i in members[: share[label]]}
    return [row for i, row in enumerate(rows) if i in keep]


def _decode_prompt(tok: Any, data: Any, length: int) -> list[int]:
    """`length` token ids of held-out test text (the same prompt for every model)."""
    ids: list[int] = []
    for encoding in tok.encode_batch(list(data.test.texts[:200])):
        ids += encoding.ids
        if len(ids) >= length:
            return ids[:length]
    if len(ids) < 2:
        raise DataError("the test split has too little text for a decode prompt")
    return ids


def measure_lm(model: Any, sets: dict[str, list[list[int]]], *, reference: Any = None,
               agreement_set: Sequence[Sequence[int]] = (),
               sentiment: tuple[list[str], list[int]] = ([], [])) -> dict[str, Any]:
    """One runtime model's quality: perplexity on each named set of token sequences ("perplexity_NAME"; sets named
    "NAME:SOURCE" are pooled into "perplexity_NAME", with "perplexity_NAME_by_source"), KL / top-1 against
    `reference` on `agreement_set`, zero-shot sentiment on `sentiment` (texts, labels), and the wall seconds of each
    part (`seconds`; the agreement's include the reference's forward passes). Speed is timed apart, every model in
    the same rounds (`lm_stream`, `edgellm.bench.generation.measure_generation_interleaved`)."""
    from edgellm.bench.generation import perplexity
    from edgellm.evaluate import lm_agreement, zero_shot_sentiment

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    out: dict[str, Any] = {}
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for name, seqs in sets.items():
        scored = perplexity(model.log_probs, seqs)
        group, _, source = name.partition(":")
        if source:
            groups.setdefault(group, {})[source] = scored
        else:
            out[f"perplexity_{name}"] = scored["perplexity"]
    for group, parts in groups.items():
        out[f"perplexity_{group}"] = pooled_perplexity(parts)
        out[f"perplexity_{group}_by_source"] = {source: r["perplexity"] for source, r in parts.items()}
    seconds["perplexity"] = time.perf_counter() - started
    if agreement_set:
        started = time.perf_counter()
        agree = lm_agreement(reference, model, agreement_set)
        out["kl_from_teacher"], out["top1_agreement"] = agree["kl"], agree["top1_agreement"]
        seconds["agreement"] = time.perf_counter() - started
    if sentiment[0]:
        started = time.perf_counter()
        out["sentiment"] = zero_shot_sentiment(model, sentiment[0], sentiment[1], SENTIMENT_LABELS)
        seconds["sentiment"] = time.perf_counter() - started
    out["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return out


def lm_stream(model: Any) -> Any:
    """A runtime model's greedy token stream for timing: (prompt ids, n) -> n new token ids, end-of-text ignored."""
    return lambda ids, n: model.tokens(list(ids), n, ignore_eos=True)


# --- recipe_minutes -------------------------------------------------------------------------------------------------

# What the teacher's measurements miss in plan_recipe_time's prediction, measured on a 2-core AMD EPYC with
# export/lm-smollm2.yaml from a fresh work folder (docs/text-generation.md): the student's export + quantize seconds
# over the teacher stage's export seconds x the student's share (201 s over 53.9 x 0.684: the teacher stage writes
# two of the formats; GPTQ, OpenVINO and their checks cost more), and the distill stage's seconds outside its
# training loop over the teacher stage's PyTorch scoring seconds (416 s over 123.9: layer choice, scoring before and
# after training with the teacher beside the student, the planner's trial steps). That run planned with 5.0 / 2.5.
EXPORT_FACTOR = 5.5
DISTILL_FACTOR = 3.4
MIN_TRAIN_MINUTES = 1.0


def decode_share(config: Any, layers: int, ffn_size: int | None = None) -> float:
    """A student's per-token work over its teacher's: `edgellm.prune.arch`'s flops_per_token (its decoder layers and
    LM head) of the teacher's shape with `layers` layers and FFN width `ffn_size` (the teacher's when None), over the
    teacher's. `config`: the teacher's transformers config; both shapes are built on the meta device (no weights)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from edgellm.prune.arch import arch_for

    def flops(n: int, width: int) -> int:
        shaped = copy.deepcopy(config)
        shaped.num_hidden_layers, shaped.intermediate_size = n, width
        with torch.device("meta"):
            return arch_for(AutoModelForCausalLM.from_config(shaped)).flops_per_token(0)

    ffn = int(config.intermediate_size)
    return flops(layers, ffn if ffn_size is None else ffn_size) / flops(int(config.num_hidden_layers), ffn)


def _planned_precisions(recipe: Recipe, lm: CausalLMConfig, profiles: Sequence[Any]) -> list[str]:
    """The precision of each runtime model the export and quantize stages will write (`_export_stage`,
    `edgellm.quantize.decoder.decoder_quantize_modes`), for the prediction only."""
    from edgellm.quantize.decoder import decoder_quantize_modes

    formats = list(recipe.export.formats)
    out = ["fp32"] * len(formats)
    modes, openvino = decoder_quantize_modes(recipe.quantize)
    quantized = recipe.quantize is not None and recipe.quantize.mode != "none"
    if quantized and "onnx" in formats and "onnxruntime" in recipe.quantize.backends:  # type: ignore[union-attr]
        out += [f"int{bits}" for bits in lm.weight_bits] + ["int8"] * len(modes)
    if openvino and "openvino" in formats:
        out += ["int8", "int4"]
    out += ["int8" if quantized and profile.quantization else "fp32" for profile in profiles]
    return out


def plan_recipe_time(recipe: Recipe, lm: CausalLMConfig, stages: dict[str, StageRecord],
                     profiles: Sequence[Any]) -> dict[str, Any]:
    """The distill stage's training minutes under causal_lm.recipe_minutes: the recipe's seconds less what the stages
    before distillation took (as recorded, also when reused from the cache, so a rerun or a resumed run plans the
    same) less a prediction of what comes after training. With s the student's share of the teacher's per-token work
    (`decode_share`):

    - evaluate: each model the recipe makes scored as the baseline stage scored the teacher's model of its kind (FP32
      as the FP32 one, the others as the 8-bit one), its own passes x s and the FP32 teacher's passes for KL at full
      cost; then (1 + decode_repeat) generations of every model (x s) and of the teacher's;
    - export + quantize: the teacher stage's export seconds x s x EXPORT_FACTOR;
    - distillation's own work besides training: the teacher stage's scoring seconds x DISTILL_FACTOR.

    Returns the plan with each part, for the record. ConfigError when the teacher stage was recorded without its
    seconds (an earlier edgellm) or less than MIN_TRAIN_MINUTES are left."""
    distill = recipe.distill
    assert distill is not None and lm.recipe_minutes is not None
    teacher = stages["teacher"]
    measured = teacher.metrics.get("phase_seconds") or {}
    if not {"export", "scoring"} <= set(measured):
        raise ConfigError(f"causal_lm.recipe_minutes: the teacher stage in {teacher.folder} was recorded without "
                          "the seconds its export and scoring took (an earlier edgellm); delete that folder to run "
                          "it again, or use causal_lm.budget_minutes")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(teacher.folder / "model")
    layers = len(distill.layers) if distill.layers is not None else int(distill.num_layers or
                                                                          config.num_hidden_layers)
    share = decode_share(config, layers, distill.ffn_size)
    teachers = stages["baseline"].metrics["models"]
    like = {"fp32": teachers["teacher onnx-fp32"]["seconds"], "int8": teachers["teacher onnx-int8"]["seconds"]}
    evaluate = 0.0
    generations = sum(t["seconds"]["generation"] for t in teachers.values())
    for precision in _planned_precisions(recipe, lm, profiles):
        t = like["fp32" if precision == "fp32" else "int8"]
        own = t["perplexity"] + t.get("sentiment", 0.0) + t.get("agreement", 0.0) / 2
        evaluate += own * share + t.get("agreement", 0.0) / 2
        generations += t["generation"] * share
    evaluate += (1 + lm.decode_repeat) * generations
    before = {name: round(float(stages[name].seconds or 0.0), 1) for name in ("teacher", "baseline", "corpus")
              if name in stages}
    after = {"distill_besides_training": DISTILL_FACTOR * measured["scoring"],
             "export_quantize": EXPORT_FACTOR * measured["export"] * share, "evaluate": evaluate}
    left = lm.recipe_minutes * 60 - sum(before.values()) - sum(after.values())
    if left < MIN_TRAIN_MINUTES * 60:
        raise ConfigError(f"causal_lm.recipe_minutes = {lm.recipe_minutes:g} leaves {left / 60:.1f} minutes to train "
                          f"(at least {MIN_TRAIN_MINUTES:g}): the stages before took {sum(before.values()) / 60:.1f} "
                          f"and the rest is predicted at {sum(after.values()) / 60:.1f} minutes; raise recipe_minutes")
    return {"recipe_minutes": lm.recipe_minutes, "train_minutes": round(left / 60, 2), "student_share": round(share, 4),
            "before_s": before, "predicted_s": {k: round(v, 1) for k, v in after.items()}}


# --- summary --------------------------------------------------------------------------------------------------------

_STAGE_TITLES = {"teacher": "teacher", "distill": "student (distilled)", "prune": "pruned"}


def lm_summary_rows(stages: dict[str, StageRecord], manifest: Any) -> list[dict[str, Any]]:
    """One row per torch stage (PyTorch FP32) and per runtime model, the teacher's runtime models first."""
    rows = []
    for name, record in stages.items():
        if name in _STAGE_TITLES:
            m = record.metrics
            rows.append({"stage": _STAGE_TITLES[name], "model": "PyTorch FP32", "parameters": m.get("parameters"),
                         "layers": m.get("layers"), "size_mb": (m.get("size_bytes") or 0) / 1e6 or None,
                         "ppl_in_domain": m.get("perplexity_in_domain"),
                         "ppl_out_of_domain": m.get("perplexity_out_of_domain"),
                         "kl": m.get("kl_from_teacher")})
    evaluated = stages["evaluate"].metrics.get("models", {})
    sizes = {e.name: sum(manifest.files.get(f, {}).get("bytes", 0) for f in e.files) for e in manifest.models}
    layers = manifest.source.get("num_hidden_layers")
    teacher_layers = stages["teacher"].metrics.get("layers")
    searched = {e.name: e.quantization["fallback_search"] for e in manifest.models
                if "fallback_search" in (e.quantization or {})}
    for name, m in evaluated.items():
        is_teacher = bool(m.get("teacher"))
        gen = m.get("generation") or {}
        rows.append({
            "stage": "teacher (runtime)" if is_teacher else
            ("quantize" if name not in ("onnx-fp32", "openvino-fp32") else "export"),
            "model": name + (f" (8-bit: {searched[name]['chosen']}; auto)" if name in searched else "")
            + (" (default)" if name == manifest.default_model else ""),
            "parameters": stages["teacher"].metrics.get("parameters") if is_teacher else
            manifest.source.get("parameters"),
            "layers": teacher_layers if is_teacher else layers,
            "size_mb": None if is_teacher else sizes.get(name, 0) / 1e6,
            "ppl_in_domain": m.get("perplexity_in_domain"), "ppl_out_of_domain": m.get("perplexity_out_of_domain"),
            "kl": m.get("kl_from_teacher"), "top1": m.get("top1_agreement"),
            "sentiment": (m.get("sentiment") or {}).get("accuracy"),
            "decode_tps": gen.get("decode_tokens_per_s"), "first_token_ms": gen.get("time_to_first_token_ms"),
        })
    return rows


def render_lm_summary(rows: list[dict[str, Any]]) -> str:
    """The end-of-run table of a text-generation recipe as Markdown."""
    lines = ["| stage | model | layers | parameters | size MB | perplexity in-domain | perplexity out-of-domain | "
             "KL from teacher | top-1 agreement | zero-shot sentiment % (calibrated) | decode tok/s | first token ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    for r in rows:
        params = f"{r['parameters'] / 1e6:.1f} M" if r.get("parameters") else "-"
        lines.append(f"| {r['stage']} | {r['model']} | {fmt(r.get('layers'), 'd')} | {params} | "
                     f"{fmt(r.get('size_mb'), '.1f')} | {fmt(r.get('ppl_in_domain'), '.2f')} | "
                     f"{fmt(r.get('ppl_out_of_domain'), '.2f')} | {fmt(r.get('kl'), '.3f')} | "
                     f"{fmt(r.get('top1'), '.3f')} | {fmt(r.get('sentiment'), '.1f')} | "
                     f"{fmt(r.get('decode_tps'), '.1f')} | {fmt(r.get('first_token_ms'), '.0f')} |")
    return "\n".join(lines) + "\n"
