"""The LLM runtime against its peers (issue 14's targets), from one run of the `llm-teacher` suite.

    python -m bench.llm_teacher                 # run the suite (python -m bench.run --suite llm-teacher), then check
    python -m bench.llm_teacher --readme-only   # check and render from the recorded bench/results/llm-teacher.json

Reads the suite's result (every edgellm model of artifacts/smollm2-teacher and the peers, measured in the same run
on the same prompt ids, held-out texts and threads) and checks, as measured:
- 8-bit: edgellm's fastest 8-bit model whose perplexity is within 1% of the FP32 teacher's decodes at least as fast
  as the fastest 8-bit peer (llama.cpp Q8_0, onnxruntime-genai int8, openvino-genai int8);
- 4-bit: edgellm's fastest 4-bit model within 1.10x the teacher's perplexity decodes at least as fast as the
  fastest 4-bit peer (whatever its perplexity);
- first token (128-token prompt): edgellm's fastest model within 1% perplexity answers within 1.5x the time of the
  fastest peer.
Writes the `llm-teacher-headline` block of README.md (a short table and the checks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench import RESULTS

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"int8_perplexity": 1.01, "int4_perplexity": 1.10, "first_token_ratio": 1.5}
BITS = {"int8": 8, "Q8_0": 8, "int4": 4, "Q4_0": 4}  # precision label -> weight bits, edgellm models and peers alike


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured subjects: name, engine, bits, perplexity ratio to the FP32 teacher, decode tok/s, first token ms."""
    teacher = next(s for s in result["subjects"] if s["stage"] == "teacher")
    rows = []
    for s in result["subjects"]:
        generation = s.get("generation") or {}
        if s.get("missing") or not generation.get("decode_tokens_per_s") or s.get("perplexity") is None:
            continue
        rows.append({"name": s["name"], "engine": s["engine"], "peer": s["kind"] == "peer",
                     "bits": BITS.get(s["precision"]), "ppl_ratio": s["perplexity"] / teacher["perplexity"],
                     "decode": generation["decode_tokens_per_s"], "first_ms": generation["time_to_first_token_ms"]})
    return rows


def _fastest(rows: list[dict[str, Any]], key: str, *, low: bool = False) -> dict[str, Any] | None:
    if not rows:
        return None
    return (min if low else max)(rows, key=lambda r: r[key])


def checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target: the edgellm model and the peer compared, their numbers, and passed (None: a side is missing)."""
    rows = _rows(result)
    ours = [r for r in rows if not r["peer"]]
    peers = [r for r in rows if r["peer"]]
    out: dict[str, dict[str, Any]] = {}
    for bits, limit in ((8, TARGETS["int8_perplexity"]), (4, TARGETS["int4_perplexity"])):
        mine = _fastest([r for r in ours if r["bits"] == bits and r["ppl_ratio"] <= limit], "decode")
        peer = _fastest([r for r in peers if r["bits"] == bits], "decode")
        out[f"{bits}-bit decode"] = {
            "rule": f"fastest edgellm {bits}-bit model within {limit:.2f}x perplexity >= fastest {bits}-bit peer",
            "edgellm": mine, "peer": peer,
            "passed": None if mine is None or peer is None else mine["decode"] >= peer["decode"]}
    mine = _fastest([r for r in ours if r["ppl_ratio"] <= TARGETS["int8_perplexity"]], "first_ms", low=True)
    peer = _fastest(peers, "first_ms", low=True)
    out["first token"] = {
        "rule": f"fastest edgellm first token within 1% perplexity <= {TARGETS['first_token_ratio']}x the fastest peer's",
        "edgellm": mine, "peer": peer,
        "passed": None if mine is None or peer is None else
        mine["first_ms"] <= TARGETS["first_token_ratio"] * peer["first_ms"]}
    return out


def headline(result: dict[str, Any]) -> str:
    """README's block: edgellm's 8 / 4-bit models, the peers they are compared with, and each target, met or not."""
    found = checks(result)
    shown = {r["name"]: r for r in _rows(result) if not r["peer"] and r["bits"]}  # every 8 / 4-bit edgellm model
    for check in found.values():
        for side in ("edgellm", "peer"):
            if check[side] is not None:
                shown[check[side]["name"]] = check[side]
    lines = ["| model | engine | perplexity / FP32 teacher | decode tok/s | first token ms |",
             "|---|---|---:|---:|---:|"]
    for r in sorted(shown.values(), key=lambda r: (r["peer"], -(r["bits"] or 32), -r["decode"])):
        lines.append(f"| {r['name']} | {r['engine']} | {r['ppl_ratio']:.3f} | {r['decode']:.1f} | {r['first_ms']:.0f} |")
    machine = result["machine"]
    lines += ["", f"{machine['cpu_model']}, {result['settings']['threads']} threads, {result['created'][:10]}; "
              f"{result['settings']['prompt_tokens']}-token prompt, {result['settings']['new_tokens']} new tokens, "
              "greedy; all engines in one run. Targets:", ""]
    for name, check in found.items():
        mark = {True: "met", False: "**not met**", None: "not measured (a side is missing)"}[check["passed"]]
        ratio = ""
        if check["passed"] is not None:
            key = "first_ms" if name == "first token" else "decode"
            ratio = f" ({check['edgellm']['name']} {check['edgellm'][key]:.1f} vs {check['peer']['name']} " \
                    f"{check['peer'][key]:.1f})"
        lines.append(f"- {name}: {check['rule']}: {mark}{ratio}")
    lines += ["", "Every engine and model: [docs/benchmarks.md](docs/benchmarks.md#the-llm-runtime-against-llamacpp-"
              "onnxruntime-genai-and-openvino-genai)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm_teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme-only", action="store_true",
                        help="measure nothing: check and render from bench/results/llm-teacher.json")
    parser.add_argument("--wait-quiet", type=float, default=30.0, metavar="SECONDS",
                        help="passed to bench.run: wait up to SECONDS for idle cores first (default 30)")
    args = parser.parse_args(argv)
    if not args.readme_only:
        from bench.run import main as run_suite

        code = run_suite(["--suite", "llm-teacher", "--wait-quiet", str(args.wait_quiet)])
        if code:
            return code
    recorded = RESULTS / "llm-teacher.json"
    if not recorded.is_file():
        sys.stderr.write(f"bench.llm_teacher: no recorded result {recorded}; run without --readme-only first\n")
        return 2
    from bench.run import update_readme

    text = headline(json.loads(recorded.read_text(encoding="utf-8")))
    print(text)
    update_readme(ROOT / "README.md", "llm-teacher-headline", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
