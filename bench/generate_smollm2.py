"""Generation benchmark: SmolLM2-135M-Instruct (teacher, FP32 PyTorch) vs its distilled student in the edgellm
runtime (INT8 and FP32, ONNX Runtime and OpenVINO), and the edgellm runtime on the teacher itself.

    flock /tmp/edgellm-heavy.lock python -m bench.generate_smollm2 --build    # run the recipe (distillation) first
    flock /tmp/edgellm-heavy.lock python -m bench.generate_smollm2            # measure

Per engine (2 threads, batch 1): decode tokens/s and time to first token for a 128-token prompt (held-out text)
and 128 new tokens (greedy, end-of-sequence ignored; medians of 3 runs after 1 warm-up), perplexity on held-out
test sentences (the recipe's seeded test split of the four VADER corpora; its sha256 is checked against the
student artifact's record), model size, cold start and peak resident memory in a fresh process. Every number is
produced by this script through `edgellm.bench.run_benchmark`, written to bench/results/NAME.json / .md / .png,
and copied into the `generate-smollm2` block of docs/benchmarks.md.

The llama.cpp Q8_0 decode speed quoted here was measured earlier on this machine, not in this run (llama-cpp-python is
not part of the install); the report quotes them as such.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LLAMA_CPP_Q8_0_DECODE = 133.0  # tok/s (llama-cpp-python 0.3.36, Q8_0, this machine, an earlier run)
TARGET_SPEEDUP = 3.0  # decode tokens/s vs the teacher in FP32 PyTorch
TARGET_PERPLEXITY_RATIO = 1.3  # student INT8 perplexity / teacher perplexity

log = logging.getLogger("bench.generate_smollm2")


def heldout(recipe: Any, student: Path) -> dict[str, Any]:
    """The recipe's test split (shuffled with a fixed seed), checked against the split the student recorded."""
    import numpy as np

    from edgellm.artifact import read_manifest
    from edgellm.errors import IntegrityError
    from edgellm.recipe import CausalLMConfig
    from edgellm.train.causal import load_lm_data

    lm = recipe.causal_lm or CausalLMConfig()
    data = load_lm_data(recipe.data, corpora=lm.corpora)
    sha = data.test.sha256()
    recorded = ((read_manifest(student).data or {}).get("split") or {}).get("sha256", {}).get("test")
    if recorded != sha:
        raise IntegrityError(f"the recipe's test split (sha256 {sha[:12]}) is not the one {student} recorded "
                             f"({str(recorded)[:12]}); rebuild the student or use its recipe")
    order = np.random.default_rng(0).permutation(len(data.test))
    return {"texts": [data.test.texts[i] for i in order],
            "info": {"corpus": " + ".join(str(p.get("name") or p.get("path")) for p in data.source["parts"]),
                     "split": "test", "rows": len(data.test), "examples": len(data.test), "sha256": sha, "matches_manifest": True, "seed": data.split.seed,
                     "test_fraction": data.split.test}}


def build(recipe_path: Path, student: Path, teacher_artifact: Path, work: Path, overrides: list[str]) -> None:
    """Run the recipe (distillation + export) and export the teacher itself, each only when missing."""
    from edgellm.quantize.decoder import export_causal_lm
    from edgellm.recipe import load_recipe
    from edgellm.train.causal import compress_causal_lm, lm_quantize_modes, load_teacher_lm

    recipe = load_recipe(recipe_path, overrides)
    if not student.exists():
        started = time.perf_counter()
        compress_causal_lm(recipe, student, work_dir=work)
        log.info("student artifact built in %.0f s", time.perf_counter() - started)
    if not teacher_artifact.exists():
        teacher = load_teacher_lm(recipe.teacher)
        modes, _ = lm_quantize_modes(recipe.quantize)
        export_causal_lm(teacher, teacher_artifact, formats=["onnx"], quantize=modes, openvino_int8=False,
                         context_length=(recipe.causal_lm.context_length if recipe.causal_lm else None),
                         source=recipe.teacher)


def optimum_comparison(student_folder: Path, artifact: Path, *, threads: int, past: int = 127) -> dict[str, Any]:
    """One decode step (1 new token after `past` cached ones) of the same student: our decoder graph vs Optimum's
    `main_export(task="text-generation-with-past")`, FP32 and dynamic INT8 (both through edgellm.quantize), on ONNX
    Runtime with `threads` threads; p50 of 50 timed calls. Also the largest logit difference between the two."""
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    from optimum.exporters.onnx import main_export

    from edgellm.bench import time_calls
    from edgellm.quantize.decoder import quantize_decoder

    out: dict[str, Any] = {"past_tokens": past, "threads": threads, "graphs": {}}
    with tempfile.TemporaryDirectory(prefix="edgellm-optimum-") as tmp:
        opt = Path(tmp)
        main_export(str(student_folder), output=str(opt), task="text-generation-with-past")
        quantize_decoder(opt / "model.onnx", opt / "model_int8.onnx", mode="dynamic")
        files = {"optimum fp32": opt / "model.onnx", "optimum int8 dynamic": opt / "model_int8.onnx",
                 "edgellm fp32": artifact / "model.onnx", "edgellm int8 dynamic": artifact / "model_int8.onnx"}
        rng = np.random.default_rng(0)
        logits = {}
        for name, path in files.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            inputs = {i.name: i for i in session.get_inputs()}
            feeds: dict[str, np.ndarray] = {"input_ids": np.array([[42]], np.int64),
                                            "attention_mask": np.ones((1, past + 1), np.int64),
                                            "position_ids": np.array([[past]], np.int64)}
            if "num_logits_to_keep" in inputs:
                feeds["num_logits_to_keep"] = np.array(1, np.int64)
            kv_rng = np.random.default_rng(1)
            for key, spec in inputs.items():
                if key.startswith("past_key_values"):
                    feeds[key] = kv_rng.standard_normal((1, spec.shape[1], past, spec.shape[3])).astype(np.float32)
            logits[name] = session.run(["logits"], feeds)[0][0, -1]
            stats = time_calls(lambda: session.run(["logits"], feeds), warmup=5, repeat=50)
            graph = onnx.load(str(path), load_external_data=False).graph
            out["graphs"][name] = {"step_p50_ms": stats["p50_ms"], "nodes": len(graph.node),
                                   "size_mb": sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6}
        del rng
        out["max_logit_diff_fp32"] = float(np.abs(logits["optimum fp32"] - logits["edgellm fp32"]).max())
    return out


def targets(result: dict[str, Any], student_name: str) -> dict[str, Any]:
    """Did the student's INT8 models reach the issue's targets? (computed from the rows just measured)"""
    rows = result["subjects"]
    teacher = next(r for r in rows if r["kind"] == "pytorch")
    out: dict[str, Any] = {"teacher_decode_tokens_per_s": teacher["generation"]["decode_tokens_per_s"],
                           "teacher_perplexity": teacher["perplexity"], "models": {}}
    for row in rows:
        if not row["name"].startswith(f"{student_name}:") or row["precision"] != "int8":
            continue
        vs = row["vs_teacher"]
        out["models"][row["name"]] = {
            "decode_tokens_per_s": row["generation"]["decode_tokens_per_s"],
            "decode_speedup": vs["decode_speedup"],
            "perplexity_ratio": vs["perplexity_ratio"],
            "meets_speed_target": vs["decode_speedup"] >= TARGET_SPEEDUP,
            "meets_perplexity_target": vs["perplexity_ratio"] <= TARGET_PERPLEXITY_RATIO,
            "faster_than_llama_cpp_q8_0": row["generation"]["decode_tokens_per_s"] > LLAMA_CPP_Q8_0_DECODE,
        }
    out["targets"] = {"decode_speedup": TARGET_SPEEDUP, "perplexity_ratio": TARGET_PERPLEXITY_RATIO,
                      "llama_cpp_q8_0_decode_tokens_per_s": LLAMA_CPP_Q8_0_DECODE,
                      "llama_cpp_note": "measured earlier on this machine, not in this run"}
    return out


def summary_markdown(summary: dict[str, Any], distill: dict[str, Any]) -> str:
    lines = ["", "### Targets (issue 7)", "",
             f"Teacher FP32 PyTorch: {summary['teacher_decode_tokens_per_s']:.1f} decode tok/s, perplexity "
             f"{summary['teacher_perplexity']:.2f}. Targets: >= {TARGET_SPEEDUP:g}x decode speed at perplexity <= "
             f"{TARGET_PERPLEXITY_RATIO:g}x; llama.cpp Q8_0 decodes the teacher at {LLAMA_CPP_Q8_0_DECODE:g} tok/s "
             "(an earlier run on this machine, not measured here).", "",
             "| student INT8 model | decode tok/s | speed-up | perplexity ratio | speed target | perplexity target "
             "| > llama.cpp Q8_0 |", "|---|---|---|---|---|---|---|"]
    for name, m in summary["models"].items():
        lines.append(f"| {name} | {m['decode_tokens_per_s']:.1f} | {m['decode_speedup']:.2f}x | "
                     f"{m['perplexity_ratio']:.3f} | {'yes' if m['meets_speed_target'] else 'no'} | "
                     f"{'yes' if m['meets_perplexity_target'] else 'no'} | "
                     f"{'yes' if m['faster_than_llama_cpp_q8_0'] else 'no'} |")
    if distill:
        ppl = distill.get("perplexity", {})
        lines += ["", f"Distillation: teacher layers {distill.get('teacher_layers')} of "
                      f"{distill.get('teacher_num_layers')}, {distill.get('steps')} steps, "
                      f"{distill.get('train_tokens')} tokens in {distill.get('train_wall_s', 0) / 60:.1f} min "
                      f"({distill.get('train_tokens_per_s') or 0:.0f} tokens/s, {distill.get('precision')}; "
                      f"budget {(distill.get('budget') or {}).get('budget_minutes')} min). "
                      f"Test perplexity (torch): teacher {ppl.get('teacher_test', float('nan')):.2f}, student before "
                      f"distillation {ppl.get('student_initial_test', float('nan')):.2f}, after "
                      f"{ppl.get('student_test', float('nan')):.2f}."]
    return "\n".join(lines) + "\n"


def optimum_markdown(comparison: dict[str, Any] | None) -> str:
    if not comparison:
        return ""
    lines = ["", f"### One decode step: edgellm's decoder graph vs Optimum's export (same student, past "
                 f"{comparison['past_tokens']} tokens, {comparison['threads']} threads, p50 of 50)", "",
             "| graph | step ms | tokens/s | nodes | size MB |", "|---|---:|---:|---:|---:|"]
    for name, g in comparison["graphs"].items():
        lines.append(f"| {name} | {g['step_p50_ms']:.2f} | {1e3 / g['step_p50_ms']:.0f} | {g['nodes']} | "
                     f"{g['size_mb']:.0f} |")
    lines += ["", f"Largest FP32 logit difference between the two graphs: {comparison['max_logit_diff_fp32']:.2g}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "export" / "lm-smollm2.yaml"))
    parser.add_argument("--student", default=str(ROOT / "artifacts" / "lm-smollm2"))
    parser.add_argument("--teacher-artifact", default=str(ROOT / "artifacts" / "smollm2-teacher"))
    parser.add_argument("--work", default=str(ROOT / "bench" / "work" / "lm-smollm2"))
    parser.add_argument("--build", action="store_true", help="Build missing artifacts (runs the distillation).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a recipe field, e.g. --set causal_lm.budget_minutes=30 (repeatable).")
    parser.add_argument("--name", default="generate_smollm2")
    parser.add_argument("--perplexity-texts", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold-runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wait-quiet", type=float, default=600.0, metavar="SECONDS",
                        help="Before measuring, wait up to this long for other processes to leave the cores idle.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from edgellm.artifact import read_manifest
    from edgellm.bench import BenchSettings, run_benchmark
    from edgellm.bench.report import write_results
    from edgellm.recipe import load_recipe

    student, teacher_artifact = Path(args.student), Path(args.teacher_artifact)
    if args.build:
        build(Path(args.recipe), student, teacher_artifact, Path(args.work), args.overrides)
    for folder in (student, teacher_artifact):
        if not folder.exists():
            print(f"{folder} is missing: run with --build first (under the lock)", file=sys.stderr)
            return 2
    recipe = load_recipe(args.recipe, args.overrides)
    data = heldout(recipe, student)
    if args.wait_quiet > 0:
        from bench.run import wait_until_quiet

        wait_until_quiet(args.wait_quiet)
    settings = BenchSettings(threads=args.threads, prompt_tokens=128, new_tokens=128, generation_warmup=1,
                             generation_repeat=args.repeat, perplexity_texts=args.perplexity_texts,
                             cold_runs=args.cold_runs, baselines=True)
    command = "python -m bench.generate_smollm2 " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    from edgellm.models import causal_lm_folder

    teacher_folder = causal_lm_folder(recipe.teacher)  # the FP32 Hugging Face folder (GGUF de-quantized once)
    result = run_benchmark(student, compare=[teacher_artifact], settings=settings, name=args.name, data=data,
                           teacher=teacher_folder, command=command, output_dir=None)
    summary = targets(result, student.name)
    result["targets"] = summary
    manifest = read_manifest(student)
    distill = (manifest.metrics or {}).get("distill", {})
    result["distillation"] = {k: v for k, v in distill.items() if k != "history"}
    result["export_perplexity"] = {e.name: e.metrics.get("perplexity") for e in manifest.models}
    student_folder = Path(args.work) / "student"
    if student_folder.is_dir():
        result["optimum_decode_step"] = optimum_comparison(student_folder, student, threads=args.threads)
    paths = write_results(result, RESULTS, args.name)
    md = Path(paths["md"])
    md.write_text(md.read_text(encoding="utf-8") + summary_markdown(summary, distill)
                  + optimum_markdown(result.get("optimum_decode_step")), encoding="utf-8")
    import os

    from bench.run import block_target, readme_text, update_readme

    document, block = block_target("docs/benchmarks.md#generate-smollm2")
    png = Path(os.path.relpath(paths["png"], document.parent)).as_posix()
    if update_readme(document, block, readme_text(md.read_text(encoding="utf-8"), png, args.name)):
        log.info("%s block %s updated", document.name, block)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
