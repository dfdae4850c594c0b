"""The compression frontier of a causal-LM student: depth (teacher layers kept by block influence) and width (FFN
neurons kept by mean activation, Minitron-style) against out-of-domain perplexity and decode tokens/s, each plan
distilled for the same short budget and measured in the edgellm runtime (8-bit weights, fused ONNX Runtime graph).

    python -m bench.lm_frontier --plans 24,20,16,20x0.75 --minutes 3 --budget 1.3

Reuses the teacher and its teacher-written corpus from a run of export/lm-smollm2.yaml (`--work`, the recipe's work
folder), so run the recipe first. Every plan gets the same training budget, so the frontier ranks plans at equal
cost (the recipe then trains the chosen one longer); after the last plan, the teacher's 8-bit model and every plan's
are timed in alternating rounds (`measure_generation_interleaved`), so a machine whose speed drifts over the
plans' training does not bias their ratios. Prints the table and the fastest plan whose
out-of-domain perplexity is within `--budget` x the FP32 teacher's, or says that none is and which is closest.
Writes bench/results/lm-frontier.json / .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from bench import record

ROOT = Path(__file__).resolve().parent.parent


def parse_plans(text: str) -> list[tuple[int, float]]:
    """"24,20x0.75" -> [(24, 1.0), (20, 0.75)]: layers kept, and the share of FFN neurons kept."""
    plans = []
    for item in text.split(","):
        layers, _, ratio = item.strip().partition("x")
        plans.append((int(layers), float(ratio) if ratio else 1.0))
    return plans


def finished(work: Path, stage: str) -> Path:
    for folder in sorted(work.glob(f"{stage}-*")):
        if (folder / "stage.json").is_file():
            return folder
    raise SystemExit(f"no finished {stage} stage in {work}: run `edgellm compress export/lm-smollm2.yaml` first")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_frontier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="export/lm-smollm2.yaml")
    parser.add_argument("--work", default="artifacts/lm-smollm2.work")
    parser.add_argument("--plans", default="24,20,16,20x0.75")
    parser.add_argument("--minutes", type=float, default=3.0, help="distillation budget per plan")
    parser.add_argument("--budget", type=float, default=1.3, help="out-of-domain perplexity / FP32 teacher's")
    parser.add_argument("--passages", type=int, default=100, help="out-of-domain passages scored per plan")
    parser.add_argument("--out", default="artifacts/lm-frontier")
    parser.add_argument("--no-record", action="store_true",
                        help="print only: write neither bench/results/ nor docs/benchmarks.md (trial runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from edgellm.data import Examples
    from edgellm.exporting.decoder import context_length_for
    from edgellm.bench.generation import measure_generation_interleaved
    from edgellm.bench.machine import machine_info
    from edgellm.pipeline_lm import CORPUS_FILE, OOD_LENGTH, lm_stream, lm_texts, measure_lm, ood_passages
    from edgellm.quantize.decoder import WeightFormats, export_causal_lm
    from edgellm.recipe import load_recipe
    from edgellm.runtime import load
    from edgellm.train.causal import distill_causal_lm, load_teacher_lm
    from edgellm.train.corpus import corpus_texts, read_corpus

    recipe = load_recipe(args.recipe)
    lm = recipe.causal_lm
    work, out = Path(args.work), Path(args.out)
    teacher_folder = finished(work, "teacher")
    corpus_folder = finished(work, "corpus") if lm.teacher_samples else None
    corpus_rows = read_corpus(corpus_folder / CORPUS_FILE) if corpus_folder else []
    data, ood = lm_texts(recipe)
    # the plans are compared out of domain; distillation's own in-domain test scoring is cut to 100 rows
    data = dataclasses.replace(data, test=Examples(data.test.texts[:100], None, data.test.ids[:100]))
    teacher = load_teacher_lm(teacher_folder / "model")
    corpus = corpus_texts(corpus_rows, teacher.tokenizer, chat=lm.corpus_chat)
    context = context_length_for(teacher.model, lm.context_length)
    passage = min(OOD_LENGTH, context)
    passages = [p for part in ood_passages(teacher.tokenizer, ood, length=passage, count=args.passages).values()
                for p in part]  # (pooled: the frontier ranks plans on every out-of-domain source together)
    prompt = [i for p in passages for i in p][: min(recipe.evaluate.latency_length, context // 2)]
    new_tokens = min(lm.decode_tokens, context - len(prompt))
    threads = recipe.evaluate.threads

    def perplexity(generator: Any) -> float:  # the recipe's evaluate-stage measurement, on these passages
        return measure_lm(generator, {"out_of_domain": passages})["perplexity_out_of_domain"]

    fp32 = {"perplexity_out_of_domain": perplexity(load(teacher_folder / "runtime", model="onnx-fp32",
                                                        threads=threads, verify=False))}
    timed = {"teacher": load(teacher_folder / "runtime", model="onnx-int8", threads=threads, verify=False)}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = []
    for layers, ratio in parse_plans(args.plans):
        width = teacher.model.config.intermediate_size
        ffn = None if ratio >= 1.0 else int(round(width * ratio / 64)) * 64
        name = f"{layers}L" + (f"-ffn{ffn}" if ffn else "")
        config = dataclasses.replace(recipe.distill, num_layers=layers, layers=None, ffn_size=ffn)
        plan_lm = dataclasses.replace(lm, budget_minutes=args.minutes, recipe_minutes=None, eval_rows=100)
        t0 = time.perf_counter()
        student = distill_causal_lm(teacher, data, config, plan_lm, out / name / "work", extra_texts=corpus,
                                    progress=False)
        train_s = time.perf_counter() - t0
        export_causal_lm(student.model, out / name / "artifact", tokenizer=teacher.tokenizer, formats=("onnx",),
                         weights=WeightFormats(bits=(8,), block_size=lm.block_size), context_length=lm.context_length,
                         texts=list(data.validation.texts[:4]), overwrite=True)
        timed[name] = load(out / name / "artifact", model="onnx-int8", threads=threads, verify=False)
        rows.append({"plan": name, "layers": layers, "ffn": ffn or width,
                     "parameters": sum(p.numel() for p in student.model.parameters()),
                     "teacher_layers": student.metrics["teacher_layers"], "steps": student.metrics["steps"],
                     "train_s": round(train_s), "perplexity_out_of_domain": perplexity(timed[name])})
    speed = measure_generation_interleaved({k: lm_stream(m) for k, m in timed.items()}, prompt,
                                           max_new_tokens=new_tokens, warmup=1, repeat=lm.decode_repeat)
    teacher_int8 = {"decode_tokens_per_s": speed["teacher"]["decode_tokens_per_s"]}
    reference = teacher_int8["decode_tokens_per_s"]
    for r in rows:
        r["decode_tokens_per_s"] = speed[r["plan"]]["decode_tokens_per_s"]
        r["ood_ratio"] = r["perplexity_out_of_domain"] / fp32["perplexity_out_of_domain"]
        r["speedup"] = r["decode_tokens_per_s"] / reference
        r["within_budget"] = r["ood_ratio"] <= args.budget
    inside = [r for r in rows if r["within_budget"]]
    chosen = max(inside, key=lambda r: r["speedup"]) if inside else None
    closest = min(rows, key=lambda r: r["ood_ratio"]) if rows else None
    machine = machine_info()
    lines = [
        "### lm-frontier: student depth / width vs out-of-domain perplexity vs decode speed",
        "",
        f"{machine['cpu_model']}, {threads} threads; each plan distilled for {args.minutes:g} minutes (same budget), "
        f"8-bit weights in the fused ONNX Runtime graph; out-of-domain perplexity on {len(passages)} {passage}-token "
        f"passages of {', '.join(lm.out_of_domain)} (never trained on); decode: {new_tokens} new tokens after a "
        f"{len(prompt)}-token prompt, median of {lm.decode_repeat}, the teacher and every plan timed in turn in each "
        f"round. Teacher: FP32 perplexity {fp32['perplexity_out_of_domain']:.2f}; 8-bit decode "
        f"{reference:.1f} tok/s. {started}.",
        "",
        "| plan | layers | FFN | parameters | steps | ppl out-of-domain | x teacher FP32 | decode tok/s | "
        "x teacher 8-bit | within budget |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {r['plan']} | {r['layers']} | {r['ffn']} | {r['parameters'] / 1e6:.1f} M | {r['steps']} | "
          f"{r['perplexity_out_of_domain']:.2f} | {r['ood_ratio']:.2f} | {r['decode_tokens_per_s']:.1f} | "
          f"{r['speedup']:.2f} | {'yes' if r['within_budget'] else 'no'} |" for r in rows],
        "",
        (f"Fastest plan within {args.budget:g}x: **{chosen['plan']}** ({chosen['speedup']:.2f}x the teacher's 8-bit "
         "decode)." if chosen else
         f"No plan is within {args.budget:g}x the teacher's out-of-domain perplexity at this training budget; the "
         f"closest is {closest['plan']} ({closest['ood_ratio']:.2f}x, {closest['speedup']:.2f}x decode)."
         if closest else "No plan was measured."),
        "",
        f"Reproduce: `python -m bench.lm_frontier --plans {args.plans} --minutes {args.minutes:g} --budget "
        f"{args.budget:g}`",
        "",
    ]
    if args.no_record:
        print("\n".join(lines))
        return 0
    record("lm-frontier", {"created": started, "settings": vars(args), "machine": machine, "teacher_fp32": fp32,
                           "teacher_int8": teacher_int8, "plans": rows,
                           "chosen": chosen["plan"] if chosen else None,
                           "closest": closest["plan"] if closest else None}, "\n".join(lines))
    from bench.run import update_readme

    update_readme(ROOT / "docs" / "benchmarks.md", "lm-frontier", "\n".join(lines).split("\n", 2)[2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
