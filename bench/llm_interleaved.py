"""Decode speed of edgellm's 8 / 4-bit decoders and the peers, interleaved: every engine once per round, several
rounds, so that the machine's drift hits all of them alike (the suite `llm-teacher` measures one engine after the
other, and two of its runs an hour apart ordered the 8-bit engines differently).

    python -m bench.llm_interleaved [--rounds 4] [--artifact artifacts/smollm2-teacher]

Needs the artifact of export/smollm2-teacher.yaml and the peers (`make peers`); a peer that is missing is listed
with its reason. Writes bench/results/llm-interleaved.json / .md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np

from bench import record
from edgellm.bench.generation import measure_generation
from edgellm.bench.machine import machine_info
from edgellm.bench.stats import SWITCH_PAUSE_S


def interleave(streams: dict[str, Callable[..., Any]], *, rounds: int, prompt_tokens: int,
               new_tokens: int) -> dict[str, list[float]]:
    """Decode tokens/s of each stream (ids, max_new_tokens) -> tokens, every stream once per round (a warm-up
    generation before its first; a SWITCH_PAUSE_S pause before each, so the previous engine's threads stop
    spinning), on the same random prompt ids: {name: [tok/s of each round]}."""
    prompt = [int(i) for i in np.random.default_rng(0).integers(100, 40000, prompt_tokens)]
    out: dict[str, list[float]] = {k: [] for k in streams}
    for r in range(rounds):
        for name, stream in streams.items():
            time.sleep(SWITCH_PAUSE_S)
            stats = measure_generation(stream, prompt, max_new_tokens=new_tokens, warmup=int(r == 0), repeat=1)
            out[name].append(stats["decode_tokens_per_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", default="artifacts/smollm2-teacher")
    parser.add_argument("--models", default="onnx-int8,onnx-int4",
                        help="model names of --artifact; FOLDER:NAME takes a model from another artifact")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args(argv)

    from edgellm.bench.peers import Missing, open_peer, prepare_peers
    from edgellm.runtime import load

    streams: dict[str, Callable[..., Any]] = {}
    for item in args.models.split(","):
        folder, _, name = item.rpartition(":")
        gen = load(folder or args.artifact, model=name, threads=args.threads)
        label = f"edgellm {name}" + (f" ({folder})" if folder else "")
        streams[label] = lambda ids, k, g=gen: g.tokens(ids, k, ignore_eos=True)
    specs = prepare_peers("embedded:SmolLM2-135M-Instruct", engines=["llama.cpp", "onnxruntime-genai"],
                          threads=args.threads)
    missing = [s.to_dict() for s in specs if isinstance(s, Missing)]
    peers = [open_peer(s, threads=args.threads) for s in specs if not isinstance(s, Missing)]
    for peer in peers:
        streams[f"{peer.name} {peer.format}"] = peer.stream
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        rounds = interleave(streams, rounds=args.rounds, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens)
    finally:
        for peer in peers:
            peer.close()
    medians = {k: float(np.median(v)) for k, v in rounds.items()}
    machine = machine_info()
    lines = [
        "### llm-interleaved: decode tokens/s, every engine once per round",
        "",
        f"{machine['cpu_model']} ({', '.join(machine['cpu_flags'])}), {args.threads} threads, batch 1, greedy, {args.prompt_tokens} prompt tokens "
        f"(the same ids for every engine), {args.new_tokens} new tokens; {args.rounds} rounds; {started}.",
        "",
        "| engine | median tok/s | rounds |",
        "|---|---:|---|",
        *[f"| {k} | {medians[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in rounds.items()],
        *([""] + [f"- {m['name']} {m['format']}: missing: {m['reason']}" for m in missing] if missing else []),
        "",
        "Reproduce: `python -m bench.llm_interleaved`",
        "",
    ]
    record("llm-interleaved", {"created": started, "settings": vars(args), "machine": machine,
                               "rounds": rounds, "median_decode_tokens_per_s": medians, "missing": missing},
           "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
