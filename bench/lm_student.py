"""The distilled LLM against its teacher, from one run of the text-generation recipe: quality where the user will use
it (in-domain and out-of-domain perplexity, KL and top-1 agreement with the teacher, zero-shot sentiment) and decode
speed, every number from the recipe's own evaluate stage (every model and the teacher's runtime models measured in
that one stage on the same texts and prompt, their decode timed in alternating rounds).

    python -m bench.lm_student --build      # run export/lm-smollm2.yaml (about an hour here), then report
    python -m bench.lm_student              # report from the finished artifact

Writes bench/results/lm-student.json / .md and the `lm-student` block of docs/benchmarks.md, with the checks of
issue 15's targets (student 8-bit: out-of-domain perplexity <= 1.3x the FP32 teacher's, in-domain <= 1.2x, decode
>= 1.5x the teacher's 8-bit model, zero-shot sentiment within 3 points of the teacher's, the recipe within 60
minutes) passed or failed as measured.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from bench import record

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"ood_ratio": 1.3, "in_domain_ratio": 1.2, "speedup": 1.5, "sentiment_drop": 3.0, "minutes": 60.0}


def build(recipe_path: str, artifact: Path) -> float:
    """Run the recipe (reusing finished stages of its work folder); returns the wall seconds of this call."""
    from edgellm.pipeline import compress
    from edgellm.recipe import load_recipe

    started = time.perf_counter()
    compress(load_recipe(recipe_path), artifact, overwrite=True, echo=print, progress=False)
    return time.perf_counter() - started


def report(artifact: Path, recipe_path: str) -> dict[str, Any]:
    """The table rows and the target checks from the artifact's manifest (its stage records)."""
    from edgellm.artifact import read_manifest
    from edgellm.bench.machine import machine_info

    manifest = read_manifest(artifact)
    stages = {k: v for k, v in manifest.metrics.items() if isinstance(v, dict) and "key" in v}
    evaluated = stages["evaluate"]["models"]
    teacher_fp32 = evaluated["teacher onnx-fp32"]
    teacher_int8 = evaluated["teacher onnx-int8"]
    student = evaluated["onnx-int8"]

    by_source = "perplexity_out_of_domain_by_source"

    def ratio(m: dict[str, Any], key: str) -> float:
        return m[f"perplexity_{key}"] / teacher_fp32[f"perplexity_{key}"]

    def tps(m: dict[str, Any]) -> float | None:
        return (m.get("generation") or {}).get("decode_tokens_per_s")

    rows = []
    for name, m in evaluated.items():
        rows.append({
            "model": name if m.get("teacher") else f"student {name}",
            "ppl_in_domain": m["perplexity_in_domain"], "in_domain_ratio": ratio(m, "in_domain"),
            "ppl_out_of_domain": m["perplexity_out_of_domain"], "ood_ratio": ratio(m, "out_of_domain"),
            "ood_by_source": {name: {"perplexity": ppl, "ratio": ppl / teacher_fp32[by_source][name]}
                              for name, ppl in (m.get(by_source) or {}).items()},
            "kl": m.get("kl_from_teacher"), "top1": m.get("top1_agreement"),
            "sentiment": (m.get("sentiment") or {}).get("accuracy"),
            "sentiment_uncalibrated": (m.get("sentiment") or {}).get("accuracy_uncalibrated"),
            "sentiment_auc": (m.get("sentiment") or {}).get("auc"),
            "decode_tps": tps(m), "speedup_vs_teacher_int8": (tps(m) or 0) / (tps(teacher_int8) or 1),
            "first_token_ms": (m.get("generation") or {}).get("time_to_first_token_ms"),
        })
    seconds = sum(float(v.get("seconds") or 0) for v in stages.values())
    speedup = tps(student) / tps(teacher_int8) if tps(student) and tps(teacher_int8) else None
    drop = (teacher_fp32["sentiment"]["accuracy"] - student["sentiment"]["accuracy"]
            if "sentiment" in teacher_fp32 and "sentiment" in student else None)
    values = {"ood_ratio": ratio(student, "out_of_domain"), "in_domain_ratio": ratio(student, "in_domain"),
              "speedup": speedup, "sentiment_drop": drop, "minutes": seconds / 60}
    checks = {k: (v, None if v is None else (v >= TARGETS[k] if k == "speedup" else v <= TARGETS[k]))
              for k, v in values.items()}
    distill = stages.get("distill", {})
    training = distill.get("training", {})
    recipe = manifest.recipe or {}
    lm = recipe.get("causal_lm", {})
    return {"artifact": str(artifact), "recipe": recipe_path, "machine": machine_info(), "rows": rows,
            "checks": {k: {"value": v, "passed": ok, "target": TARGETS[k]} for k, (v, ok) in checks.items()},
            "stage_seconds": {k: v.get("seconds") for k, v in stages.items()},
            "student": {"layers": manifest.source.get("num_hidden_layers"),
                        "parameters": manifest.source.get("parameters"),
                        "teacher_layers": training.get("teacher_layers"), "steps": training.get("steps"),
                        "teacher_num_layers": training.get("teacher_num_layers"),
                        "train_tokens": training.get("train_tokens"), "extra_texts": training.get("extra_texts")},
            "corpora": {"names": lm.get("corpora"),
                        "rows": lm.get("corpus_rows")},
            "corpus": stages.get("corpus"), "texts": stages["evaluate"].get("texts"),
            "decode": {"prompt_tokens": stages["evaluate"].get("decode_prompt_tokens"),
                       "new_tokens": lm.get("decode_tokens"),
                       "repeat": lm.get("decode_repeat"),
                       "threads": recipe.get("evaluate", {}).get("threads")},
            "out_of_domain": {"sources": lm.get("out_of_domain"),
                              "tokens": (stages["teacher"].get("texts") or {}).get("out_of_domain_tokens")},
            "sentiment_examples": stages["evaluate"].get("sentiment_examples"),
            "default_model": manifest.default_model, "time_plan": time_plan(stages)}


def _corpora(corpora: dict[str, Any]) -> str:
    """"movie-reviews, sotu (at most 4400 rows)": the built-in corpora distilled on, and their caps."""
    rows = corpora.get("rows") or {}
    return ", ".join(name + (f" (at most {rows[name]} rows)" if name in rows else "")
                     for name in corpora.get("names") or []) or "the recipe's data"


def time_plan(stages: dict[str, Any]) -> dict[str, Any] | None:
    """causal_lm.recipe_minutes' plan (the distill stage's record) beside what the stages it predicted took."""
    distill = stages.get("distill") or {}
    plan = distill.get("recipe_time")
    if plan is None:
        return None
    loop = float((distill.get("training") or {}).get("train_wall_s") or 0)
    actual = {"distill_besides_training": float(distill.get("seconds") or 0) - loop,
              "export_quantize": sum(float((stages.get(k) or {}).get("seconds") or 0) for k in ("export", "quantize")),
              "evaluate": float(stages["evaluate"].get("seconds") or 0)}
    return {**plan, "training_s": loop, "actual_s": {k: round(v, 1) for k, v in actual.items()}}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["student"]
    d = result["decode"]
    o = result["out_of_domain"]
    corpus = result.get("corpus") or {}
    lines = [
        "### lm-student: the distilled SmolLM2 student against its teacher, one run of the recipe",
        "",
        f"{m['cpu_model']}, {d['threads']} threads, batch 1, greedy decode of {d['new_tokens']} new tokens after a "
        f"{d['prompt_tokens']}-token held-out prompt (median of {d['repeat']}, every model timed in turn in each round). Student: {s['layers']} of the teacher's {s['teacher_num_layers']} layers "
        f"({s['teacher_layers']}), {s['parameters'] / 1e6:.1f} M parameters, {s['steps']} steps / "
        f"{s['train_tokens']} training tokens"
        + f" on {_corpora(result.get('corpora') or {})}"
        + (f", {corpus.get('texts')} teacher-written texts ({corpus.get('tokens')} tokens)" if corpus else "")
        + f". Perplexity on {result['texts']['in_domain']} test sentences of the training corpora (in-domain) and "
        f"{result['texts']['out_of_domain']} {o['tokens']}-token passages of {', '.join(o['sources'] or [])}, never "
        f"trained on "
        f"(out-of-domain, pooled; by source below); KL / top-1 against the teacher in FP32; zero-shot sentiment on "
        f"{result['sentiment_examples']} movie-review test sentences by prompting: accuracy calibrated on content-free "
        "texts (plain argmax in brackets) and AUC of the positive-minus-negative score.",
        "",
        "| model | ppl in-domain | x teacher | ppl out-of-domain | x teacher | KL | top-1 | sentiment % | "
        "sentiment AUC | decode tok/s | x teacher 8-bit | first token ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in result["rows"]:
        lines.append(f"| {r['model']} | {f(r['ppl_in_domain'], '.1f')} | {f(r['in_domain_ratio'], '.2f')} | "
                     f"{f(r['ppl_out_of_domain'], '.1f')} | {f(r['ood_ratio'], '.2f')} | {f(r['kl'], '.3f')} | "
                     f"{f(r['top1'], '.3f')} | {f(r['sentiment'], '.1f')} "
                     f"({f(r.get('sentiment_uncalibrated'), '.1f')}) | "
                     f"{f(r.get('sentiment_auc'), '.3f')} | {f(r['decode_tps'], '.1f')} | "
                     f"{f(r['speedup_vs_teacher_int8'], '.2f')} | {f(r['first_token_ms'], '.0f')} |")
    sources = list(result["rows"][0].get("ood_by_source") or {}) if result["rows"] else []
    if sources:
        counts = result["texts"].get("out_of_domain_by_source") or {}
        lines += ["", "Out-of-domain perplexity by source (x teacher FP32):", "",
                  "| model | " + " | ".join(f"{name} ({counts.get(name, '?')} passages)" for name in sources) + " |",
                  "|---|" + "---:|" * len(sources)]
        for r in result["rows"]:
            cells = [r["ood_by_source"].get(name) for name in sources]
            lines.append(f"| {r['model']} | " + " | ".join(
                "-" if c is None else f"{c['perplexity']:.1f} ({c['ratio']:.2f}x)" for c in cells) + " |")
    names = {"ood_ratio": "out-of-domain perplexity (pooled) / teacher FP32 <= 1.3",
             "in_domain_ratio": "in-domain perplexity / teacher FP32 <= 1.2",
             "speedup": "decode tok/s / teacher 8-bit >= 1.5",
             "sentiment_drop": "zero-shot sentiment (calibrated): teacher minus student <= 3 points",
             "minutes": "the whole recipe (sum of its stages) <= 60 minutes"}
    lines += ["", "Targets (student onnx-int8):", ""]
    for key, c in result["checks"].items():
        verdict = "not measured" if c["passed"] is None else ("met" if c["passed"] else "not met")
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        lines.append(f"- {names[key]}: {value}: **{verdict}**")
    plan = result.get("time_plan")
    if plan:
        parts = ", ".join(f"{k.replace('_', ' ')} {plan['predicted_s'][k]:.0f} s predicted / {v:.0f} s taken"
                          for k, v in plan["actual_s"].items())
        lines += ["", f"Time plan (`causal_lm.recipe_minutes: {plan['recipe_minutes']:g}`): the stages before "
                  f"distillation took {sum(plan['before_s'].values()):.0f} s; {parts}; so "
                  f"{plan['train_minutes']:.1f} minutes to train (the loop ran {plan['training_s']:.0f} s)."]
    lines += ["", f"Stage seconds: {', '.join(f'{k} {v:.0f}' for k, v in result['stage_seconds'].items() if v)}.",
              "", "Reproduce: `python -m bench.lm_student --build`", ""]
    return "\n".join(lines)


def headline(result: dict[str, Any]) -> str:
    """README's short table: the teacher in FP32 and 8-bit, the student's default 8-bit model, and the targets."""
    rows = {r["model"]: r for r in result["rows"]}
    lines = ["| model | perplexity in-domain | out-of-domain (x teacher) | zero-shot sentiment % (calibrated) | "
             "decode tok/s |",
             "|---|---:|---:|---:|---:|"]
    for name in ("teacher onnx-fp32", "teacher onnx-int8", "student onnx-int8"):
        r = rows.get(name)
        if r is None:
            continue
        sentiment = "-" if r["sentiment"] is None else f"{r['sentiment']:.1f}"
        lines.append(f"| {name} | {r['ppl_in_domain']:.1f} | {r['ppl_out_of_domain']:.1f} ({r['ood_ratio']:.2f}x) | "
                     f"{sentiment} | {r['decode_tps']:.1f} |")
    met = [k for k, c in result["checks"].items() if c["passed"]]
    missed = [k for k, c in result["checks"].items() if c["passed"] is False]
    lines += ["", f"{result['machine']['cpu_model']}, {result['decode']['threads']} threads. Targets met: "
              f"{', '.join(met) or 'none'}; not met: {', '.join(missed) or 'none'} (details: "
              "[docs/benchmarks.md](docs/benchmarks.md#the-distilled-smollm2-student-against-its-teacher))."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_student", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="export/lm-smollm2.yaml")
    parser.add_argument("--artifact", default="artifacts/lm-smollm2")
    parser.add_argument("--build", action="store_true", help="run the recipe first (finished stages are reused)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    artifact = Path(args.artifact)
    if args.build:
        build(args.recipe, artifact)
    result = report(artifact, args.recipe)
    text = markdown(result)
    record("lm-student", result, text)
    if not args.no_docs:
        from bench.run import update_readme

        update_readme(ROOT / "docs" / "benchmarks.md", "lm-student", text.split("\n", 2)[2])
        update_readme(ROOT / "README.md", "lm-student-headline", headline(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
