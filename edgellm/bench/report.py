"""Reports: NAME.json, NAME.md (tables) and NAME.png (latency vs accuracy, marker area = size on disk)."""

from __future__ import annotations

import json
from pathlib import Path
import os
from typing import Any

import numpy as np

from edgellm.config import jsonable
from edgellm.errors import ConfigError

__all__ = ["write_results", "render_markdown", "plot_results", "check_result_name"]


def check_result_name(name: str) -> None:
    """A result name becomes NAME.json / .md / .png: letters, digits, '.', '_' and '-' only."""
    if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise ConfigError(f"result name {name!r} must be a plain file name such as 'reference' "
                          "(letters, digits, '.', '_', '-')")


def write_results(result: dict[str, Any], output_dir: str | os.PathLike[str], name: str) -> dict[str, str]:
    """Write NAME.json, NAME.md and NAME.png into `output_dir`; return their paths."""
    check_result_name(name)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / f"{name}.json"), "md": str(out / f"{name}.md"), "png": str(out / f"{name}.png")}
    body = {k: v for k, v in result.items() if k != "paths"}
    Path(paths["json"]).write_text(json.dumps(body, indent=2, default=jsonable) + "\n",
                                   encoding="utf-8")
    Path(paths["md"]).write_text(render_markdown(result), encoding="utf-8")
    plot_results(result, paths["png"])
    return paths


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _machine_line(result: dict[str, Any], data: str) -> str:
    m, s = result["machine"], result["settings"]
    flags = ", ".join(m.get("cpu_flags") or []) or "no INT8 flags"
    return (f"{m['cpu_model']} ({m.get('cpu_count')} logical CPUs; {flags}), {s['threads']} threads per engine; "
            f"{result['created']}. {data}: {result['data'].get('corpus', '?')} "
            f"({result['data'].get('examples')} sentences).")


def _footer(result: dict[str, Any]) -> list[str]:
    rows = result["subjects"]
    lines: list[str] = []
    busy = [r["contention"]["other_cores"] for r in rows if (r.get("contention") or {}).get("other_cores") is not None]
    rounds = (result.get("timing") or {}).get("contention") or {}
    if rounds.get("other_cores") is not None:
        busy.append(rounds["other_cores"])
    if busy:
        worst = max(busy)
        verdict = "quiet machine" if worst < 0.1 else "NOISY: other work competed for the cores; compare with care"
        lines += ["", f"Other processes used on average {min(busy):.2f}–{worst:.2f} of "
                  f"{result['machine'].get('cpu_count')} cores while each engine was measured"
                  f"{' and during the alternating rounds' if rounds else ''} ({verdict})."]
    if result.get("command"):
        lines += ["", f"Reproduce: `{result['command']}`"]
    return lines


def _timing_line(result: dict[str, Any], what: str) -> str:
    """How the numbers the ratios use were timed: in alternating rounds over every model, or one after another."""
    timing = result.get("timing") or {}
    if timing.get("mode") == "interleaved":
        settle = f" and {timing['settle_calls']} untimed calls" if timing.get("settle_calls") else ""
        peers = f" ({timing['peers']} of them peers, each in its own process)" if timing.get("peers") else ""
        return (f"{what} of all {timing['models']} models{peers} timed in the same {timing['rounds']} alternating rounds "
                "(each round every model in turn, the order reversed every other round, each turn opened by a "
                f"{timing.get('pause_s', 0):g} s pause{settle}), so the ratios hold on a machine whose speed drifts; "
                "the other columns are timed one model after another.")
    why = timing.get("reason") or "interleave off, or a single model"
    return (f"{what} timed one model after another ({why}): a machine whose speed drifts during the run moves the "
            "ratios.")


def render_markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: machine, settings, one row per subject; latency, throughput and ratio tables."""
    if result["task"] == "text-generation":
        return _render_generation(result)
    s = result["settings"]
    rows = result["subjects"]
    head = str(max(s["lengths"]))
    lines = [
        f"### {result['name']}: {result['task']}",
        "",
        _machine_line(result, "Test split"),
        "",
        f"| stage | model | engine | precision | size MB | accuracy % | p50 ms @{head} | p90 | p99 | p50 real "
        "| cold start s | peak RSS MB | × teacher p50 | × Optimum p50 | × smaller than teacher |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = r["latency"][head]
        real = r["latency"].get("real", {}).get("p50_ms")
        vt = r.get("vs_teacher") or {}
        vo = r.get("vs_optimum") or {}
        lines.append(
            f"| {r['stage']} | {r['name']} | {r['engine']} | {r['precision']} | {r['size_mb']:.1f} | "
            f"{r['accuracy_pct']:.2f} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | "
            f"{_fmt(real)} | {_fmt(r.get('cold_start_s'))} | {_fmt(r.get('peak_rss_mb'), 0)} | "
            f"{_fmt(vt.get('p50_speedup'))} | {_fmt(vo.get('p50_speedup'))} | {_fmt(vt.get('size_ratio'), 1)} |"
        )
    lines += ["", f"Batch-1 latency, ms (p50 / p99) by input length; `real` = the test sentences one by one "
              f"(mean {_fmt(rows[0]['latency'].get('real', {}).get('tokens_mean'), 1)} tokens):", ""]
    keys = [str(n) for n in s["lengths"]] + (["real"] if s["real_sample"] else [])
    lines.append("| model | " + " | ".join(f"{k} tokens" if k != "real" else "real" for k in keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    for r in rows:
        cells = [f"{r['latency'][k]['p50_ms']:.2f} / {r['latency'][k]['p99_ms']:.2f}" for k in keys]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    if s["batch_sizes"]:
        combos = [(str(b), str(n)) for b in s["batch_sizes"] for n in s["lengths"]]
        lines += ["", "Throughput, texts/s (batch × tokens):", "",
                  "| model | " + " | ".join(f"{b} × {n}" for b, n in combos) + " |",
                  "|---|" + "---:|" * len(combos)]
        for r in rows:
            lines.append(f"| {r['name']} | " + " | ".join(f"{r['throughput'][b][n]['texts_per_s']:.1f}"
                                                           for b, n in combos) + " |")
    if any("agreement" in r for r in rows):
        lines += ["", "Embedding agreement with the reference (mean cosine; Spearman of pair similarities):", "",
                  "| model | mean cosine | Spearman |", "|---|---:|---:|"]
        for r in rows:
            a = r["agreement"]
            lines.append(f"| {r['name']} | {_fmt(a.get('mean_cosine_to_reference'), 6)} | {a['spearman']:.6f} |")
    metric = rows[0].get("accuracy_metric", "accuracy")
    lines += [
        "",
        f"Accuracy: {metric}. Latency: batch 1, inputs of exactly N tokens built from real test sentences, "
        f"{s['warmup']} warm-up + {s['repeat']} timed calls, text in → result out (tokenization included). "
        f"Cold start: a fresh process, start to first result (median of {s['cold_runs']}); peak RSS of that process "
        "after one batch at the longest length. Size: model files (tokenizer excluded).",
        "",
        _timing_line(result, "Batch-1 latency at each fixed length (the × columns' source)"),
    ]
    return "\n".join(lines + _footer(result)) + "\n"


def _render_generation(result: dict[str, Any]) -> str:
    s = result["settings"]
    rows = result["subjects"]
    lines = [
        f"### {result['name']}: {result['task']}",
        "",
        _machine_line(result, "Held-out text"),
        "",
        "| stage | model | engine | precision | size MB | perplexity | first token ms | prompt tok/s | decode tok/s "
        "| cold start s | peak RSS MB | × teacher decode | perplexity / teacher | × smaller than teacher |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    missing = []
    for r in rows:
        if r.get("missing"):
            missing.append(f"- {r['name']}: missing: {r.get('reason')}")
            lines.append(f"| {r['stage']} | {r['name']} | {r['engine']} | {r['precision']} | missing (below) "
                         "| – | – | – | – | – | – | – | – | – |")
            continue
        g = r["generation"]
        vt = r.get("vs_teacher") or {}
        lines.append(
            f"| {r['stage']} | {r['name']} | {r['engine']} | {r['precision']} | {r['size_mb']:.1f} | "
            f"{_fmt(r['perplexity'])} | {g['time_to_first_token_ms']:.1f} | {_fmt(g['prompt_tokens_per_s'], 1)} | "
            f"{_fmt(g['decode_tokens_per_s'], 1)} | {_fmt(r.get('cold_start_s'))} | {_fmt(r.get('peak_rss_mb'), 0)} | "
            f"{_fmt(vt.get('decode_speedup'))} | {_fmt(vt.get('perplexity_ratio'), 3)} | {_fmt(vt.get('size_ratio'), 1)} |"
        )
    lines += [
        "",
        f"Batch 1, greedy, a {s['prompt_tokens']}-token prompt of held-out text, {s['new_tokens']} new tokens "
        f"(end-of-sequence ignored); {s['generation_warmup']} warm-up + {s['generation_repeat']} timed runs, medians. "
        "First token = prompt processing + first token; decode tok/s over the tokens after the first. Perplexity: "
        f"exp(mean NLL per predicted token) over {rows[0].get('perplexity_texts')} held-out texts, each scored on its "
        f"own. Cold start: a fresh process, start to first token (median of {s['cold_runs']}); peak RSS of that "
        "process after all new tokens. Size: model files (tokenizer excluded).",
        "",
        _timing_line(result, "First token and decode speed"),
    ]
    if any(r.get("stage") == "peer" for r in rows):
        lines += ["", "Peers (stage `peer`) run the same teacher in the same run, on the same prompt token ids, "
                      "held-out texts and thread count, each in its own process (peak RSS of that process after "
                      "loading and generating; no cold start). With alternating rounds their first token and decode "
                      "are timed in the rounds beside edgellm's models; otherwise one peer after another, after "
                      "them."]
    if missing:
        lines += ["", "Not measured:", *missing]
    return "\n".join(lines + _footer(result)) + "\n"


def plot_results(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Latency vs accuracy (generators: time per token vs perplexity) per subject, marker area proportional to
    size on disk (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["subjects"]
    threads = result["settings"]["threads"]
    if result["task"] == "text-generation":
        rows = [r for r in rows if not r.get("missing") and r.get("perplexity")]
        x = [1e3 / r["generation"]["decode_tokens_per_s"] for r in rows]
        y = [r["perplexity"] for r in rows]
        xlabel = f"decode latency, ms per token (batch 1, greedy, {threads} threads)"
        ylabel, title = "perplexity on held-out text (lower is better)", "time per token vs perplexity"
    else:
        head = str(max(result["settings"]["lengths"]))
        x = [r["latency"][head]["p50_ms"] for r in rows]
        y = [r["accuracy_pct"] for r in rows]
        xlabel = f"p50 latency, ms (batch 1, {head} tokens, {threads} threads)"
        ylabel = ("test accuracy, %" if result["task"] == "text-classification"
                  else "nearest-centroid accuracy on the test split, %")
        title = "latency vs accuracy"
    sizes = np.array([r["size_mb"] for r in rows])
    area = 40 + 1400 * sizes / max(float(sizes.max()), 1e-9)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = plt.get_cmap("tab10")(np.arange(len(rows)) % 10)
    for k, (xi, yi, ai, r) in enumerate(zip(x, y, area, rows)):
        ax.scatter([xi], [yi], s=[ai], color=colors[k], alpha=0.6, edgecolors="black", linewidths=0.6,
                   label=f"{k + 1}  {r['name']} ({r['size_mb']:.1f} MB)")
        ax.annotate(str(k + 1), (xi, yi), ha="center", va="center", fontsize=8, fontweight="bold")
    legend = ax.legend(fontsize=8, loc="best", framealpha=0.85)
    for handle in legend.legend_handles:
        handle.set_sizes([40])  # uniform legend markers; the plot's areas carry the sizes
    if max(x) / max(min(x), 1e-9) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{result['name']}: {title} (marker area = size on disk)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


