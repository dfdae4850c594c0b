"""Where edgellm's 4-bit decoder loses decode speed to onnxruntime-genai int4 (issue 14), and what closing it costs.

    python -m bench.int4_gap [--rounds 7] [--artifact artifacts/smollm2-teacher]

The artifact's own `onnx-int4` (the recipe's settings: GPTQ on `calibration_sequences` training sequences, no 8-bit
fallback, the LM head's rows of the first `lm_head_rows` token ids at 8 bits and the rest at 4), and its FP32 graph
quantized again with one setting changed: the whole LM head at 4 bits (`lm_head_rows: 0`) or half as many 8-bit
rows, 32 calibration sequences, 10% of the 4-bit weights kept at 8 bits (`int4_fallback: 0.1`), and the settings
before 2026-12-06 (32 sequences, 10% fallback, the whole head at 8 bits). Each model's
perplexity ratio to the artifact's FP32 model on the recipe's validation split and on the
out-of-domain passages (as the evaluate stage scores them), then decode tokens/s of every model and of
onnxruntime-genai int4 interleaved, every engine once per round. Needs the artifact of export/smollm2-teacher.yaml
and the peers (`make peers`). Writes bench/results/int4-gap.json / .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import record
from bench.llm_interleaved import interleave
from edgellm.bench.machine import machine_info

VARIANTS = {  # name -> changes of the recipe's causal_lm settings (WeightFormats fields, calibration_sequences / _tokens)
    "lm_head_rows 0 (whole head 4-bit)": {"lm_head_rows": 0},
    "lm_head_rows 8192": {"lm_head_rows": 8192},
    "calibration_sequences 32": {"calibration_sequences": 32},
    "int4_fallback 0.1": {"int4_fallback": 0.1},
    "before 2026-12-06 (32 sequences, fallback 0.1, head 8-bit)": {"calibration_sequences": 32, "int4_fallback": 0.1,
                                                                   "lm_head_rows": None},
}


def _texts(recipe: Any, artifact: Path, texts: int) -> tuple[dict[str, list[list[int]]], list[str]]:
    """(validation and out-of-domain token sequences, as the evaluate stage scores them; the training texts GPTQ
    calibrates on)."""
    from tokenizers import Tokenizer

    from edgellm.artifact import read_manifest
    from edgellm.pipeline_lm import lm_texts, ood_sets, scoring_sets
    from edgellm.runtime.text import plain_tokenizer

    data, ood = lm_texts(recipe)
    manifest = read_manifest(artifact)
    tok = plain_tokenizer(Tokenizer.from_file(str(artifact / manifest.tokenizer)))
    sets = scoring_sets(tok, data, ood, count=texts, context=manifest.max_length)
    pooled = [seq for seqs in ood_sets(sets).values() for seq in seqs]
    return {"validation": sets["validation"], "out_of_domain": pooled}, list(data.train.texts)


def _build(artifact: Path, work: Path, recipe: Any, train_texts: list[str]) -> dict[str, Path]:
    """Each variant's folder (the artifact's manifest and tokenizer, its own model_int4.onnx), built once."""
    from transformers import PreTrainedTokenizerFast

    from edgellm.quantize.decoder import WeightFormats, calibration_sequences, quantize_decoder_nbits

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(artifact / "tokenizer.json"))
    lm = recipe.causal_lm
    folders = {}
    for name, changes in VARIANTS.items():
        changes = dict(changes)
        tokens = changes.pop("calibration_tokens", lm.calibration_tokens)
        count = changes.pop("calibration_sequences", lm.calibration_sequences)
        formats = dataclasses.replace(WeightFormats.from_config(lm), **changes)
        settings = json.dumps([tokens, count, dataclasses.asdict(formats)], sort_keys=True)
        folder = work / f"int4-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"  # rebuilt when settings change
        folders[name] = folder
        if (folder / "model_int4.onnx").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for f in ("edgellm.json", "tokenizer.json"):
            shutil.copyfile(artifact / f, folder / f)
        calibration = calibration_sequences(tokenizer, train_texts, count=count, length=tokens)
        partial = folder / "model_int4.partial.onnx"
        quantize_decoder_nbits(artifact / "model.onnx", partial, bits=4,
                               weights=formats, calibration=calibration)
        partial.replace(folder / "model_int4.onnx")
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.int4_gap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default="artifacts/smollm2-teacher")
    parser.add_argument("--recipe", default="export/smollm2-teacher.yaml")
    parser.add_argument("--work", default=None, help="variant models (default ARTIFACT.int4-gap)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--texts", type=int, default=200, help="validation texts and out-of-domain passages scored")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from edgellm.bench.generation import perplexity
    from edgellm.bench.peers import Missing, open_peer, prepare_peers
    from edgellm.recipe import load_recipe
    from edgellm.runtime import load

    artifact = Path(args.artifact)
    recipe = load_recipe(args.recipe)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sets, train_texts = _texts(recipe, artifact, args.texts)
    folders = {"recipe settings (the artifact's onnx-int4)": artifact,
               **_build(artifact, Path(args.work or f"{artifact}.int4-gap"), recipe, train_texts)}

    fp32 = load(artifact, model="onnx-fp32", threads=args.threads, verify=False)
    base = {name: perplexity(fp32.log_probs, seqs)["perplexity"] for name, seqs in sets.items()}
    models, quality, sizes = {}, {}, {}
    for name, folder in folders.items():
        models[name] = load(folder, model="onnx-int4", threads=args.threads, verify=False)
        quality[name] = {s: perplexity(models[name].log_probs, seqs)["perplexity"] / base[s] for s, seqs in sets.items()}
        sizes[name] = (folder / "model_int4.onnx").stat().st_size / 1e6
        print(f"{name}: {quality[name]}", flush=True)

    streams: dict[str, Callable[..., Any]] = {
        f"edgellm {name}": (lambda ids, k, g=g: g.tokens(ids, k, ignore_eos=True)) for name, g in models.items()}
    specs = prepare_peers(recipe.teacher, engines=["onnxruntime-genai"], threads=args.threads)
    missing = [s.to_dict() for s in specs if isinstance(s, Missing)]
    peers = [open_peer(s, threads=args.threads) for s in specs if not isinstance(s, Missing)]
    for peer in peers:
        if peer.format == "int4":
            streams[f"{peer.name} {peer.format}"] = peer.stream
    try:
        rounds = interleave(streams, rounds=args.rounds, prompt_tokens=128, new_tokens=128)
    finally:
        for peer in peers:
            peer.close()
    medians = {k: float(np.median(v)) for k, v in rounds.items()}
    peer_speed = medians.get("onnxruntime-genai int4")
    machine = machine_info()
    rows = []
    for name in folders:
        speed = medians[f"edgellm {name}"]
        vs = f"{speed / peer_speed:.3f}" if peer_speed else "–"
        rows.append(f"| {name} | {quality[name]['validation']:.4f} | {quality[name]['out_of_domain']:.4f} | "
                    f"{sizes[name]:.1f} | {speed:.1f} | {vs} |")
    if peer_speed:
        rows.append(f"| onnxruntime-genai int4 (peer) | – | – | – | {peer_speed:.1f} | 1.000 |")
    lines = [
        "### int4-gap: edgellm's 4-bit decoder against onnxruntime-genai int4, choice by choice",
        "",
        f"{machine['cpu_model']} ({', '.join(machine['cpu_flags'])}), {args.threads} threads, batch 1, greedy, 128 "
        f"random prompt ids (the same for every engine), 128 new tokens; {args.rounds} interleaved rounds "
        f"(medians); perplexity over {len(sets['validation'])} validation texts and {len(sets['out_of_domain'])} "
        f"out-of-domain passages, each model over the artifact's FP32 model; {started}.",
        "",
        "| 4-bit model | validation perplexity / FP32 | out-of-domain / FP32 | size MB | decode tok/s | / peer |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        *([""] + [f"- {m['name']} {m['format']}: missing: {m['reason']}" for m in missing] if missing else []),
        "",
        "Reproduce: `python -m bench.int4_gap`",
        "",
    ]
    record("int4-gap", {"created": started, "settings": vars(args), "machine": machine, "variants": VARIANTS,
                        "perplexity_fp32": base, "perplexity_ratio": quality, "size_mb": sizes, "rounds": rounds,
                        "median_decode_tokens_per_s": medians, "missing": missing}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
