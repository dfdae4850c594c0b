"""The `edgellm fit` demo (issue 18): the sentiment recipe on cpu-x86-avx512 under a relative speed budget.

    python -m bench.fit_demo          # = edgellm fit export/sentiment-minilm.yaml --target cpu-x86-avx512
                                      #   --min-speedup 12 --at-length 128 --max-drop 1.0 --budget-minutes 60
                                      #   -o artifacts/fit-sentiment

Runs the fit (about an hour here, the search within --budget-minutes; run it alone on the machine: the budget is
relative to the teacher timed in the same run, and the cost model is timed here too), then copies its
frontier.json / .md / .png to bench/results/NAME.* and writes the `fit` block of docs/benchmarks.md (the frontier
report) and the `fit-headline` block of README.md (teacher against the chosen plan, or why no plan met the budget).
Rerunning resumes from the work folder (OUT.work): finished trials are reused.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def headline(record: dict[str, Any]) -> str:
    """The README block: the teacher and the chosen plan as measured after the choice, or the budgets no plan met."""
    budget = " ".join(f"`{k} {v:g}`" for k, v in record["budget"].items())
    ref = record["reference"]
    plans = {r["plan"]: r for r in record["plans"]}
    if record.get("chosen"):
        c = plans[record["chosen"]]
        f = c["final"]
        lines = [
            f"| {record['target']}, {budget} | test accuracy % | p50 ms @{f['tokens']} tokens | size MB |",
            "|---|---:|---:|---:|",
            f"| teacher, FP32 PyTorch | {f['teacher_test_points']:.2f} | {f['teacher_p50_ms']:.2f} | "
            f"{f['teacher_size_bytes'] / 1e6:.1f} |",
            f"| chosen plan `{c['plan']}` | {f['test_points']:.2f} | {f['p50_ms']:.2f} | {f['size_bytes'] / 1e6:.1f} |",
            "",
            f"{f['speedup']:.2f}x faster (teacher and plan timed in alternating rounds of one run), "
            f"{f['test_drop']:+.2f} points on the test split; budgets on these numbers: "
            + ", ".join(f"{k} {'met' if j['met'] else 'not met'}" for k, j in f["judged"].items())
            + f". Search: {record['elapsed_s'] / 60:.0f} minutes, {len(record['plans'])} plans, cost model median "
            f"error {record['cost_model']['median_error_pct']:.1f}% on the {record['cost_model']['measured_plans']} "
            "plans built ([docs/fit.md](docs/fit.md), [frontier](docs/benchmarks.md#edgellm-fit-the-sentiment-recipe"
            "-on-cpu-x86-avx512)).",
        ]
    else:
        failed = "; ".join(f"{x['flag']} {x['limit']:g}: best {'measured' if x['measured'] else 'predicted'} "
                           f"{x['best']:.3g} ({x['plan']})" for x in record["failed"] if x.get("best") is not None)
        lines = [f"{record['target']}, {budget}: **no plan meets the budget** ({failed}). Teacher: validation "
                 f"{ref['points']:.2f}, p50 {ref['p50_ms']:.2f} ms. Closest: "
                 + ", ".join(f"`{x['plan']}` ({x['p50_ms']:.2f} ms, {x['points']:.2f})" if x["points"] is not None
                             else f"`{x['plan']}` ({x['p50_ms']:.2f} ms)" for x in record["closest"][:3])
                 + f". Search: {record['elapsed_s'] / 60:.0f} minutes{_cost_model(record)} "
                 "([docs/fit.md](docs/fit.md)).",
                 ]
    return "\n".join(lines)


def _cost_model(record: dict[str, Any]) -> str:
    cm = record["cost_model"]
    if cm.get("median_error_pct") is None:
        return ""
    return f", cost model median error {cm['median_error_pct']:.1f}% on the {cm['measured_plans']} plans built"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fit_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="export/sentiment-minilm.yaml")
    parser.add_argument("--target", default="cpu-x86-avx512")
    parser.add_argument("--min-speedup", type=float, default=12.0)
    parser.add_argument("--at-length", type=int, default=128)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--space", action="append", default=[], metavar="AXIS=V1,V2",
                        help="as edgellm fit --space (repeatable); default: the recipe's neighbourhood")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="artifacts/fit-sentiment")
    parser.add_argument("--work", default=None, help="stage cache (default OUT.work)")
    parser.add_argument("--name", default="fit-sentiment", help="bench/results/NAME.json / .md / .png")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait (at most this long) until other processes leave the CPUs idle")
    parser.add_argument("--no-record", action="store_true",
                        help="print only: write neither bench/results/ nor README.md / docs/benchmarks.md")
    args = parser.parse_args(argv)

    from edgellm.console import configure
    from edgellm.fit import FIT_FILES, fit
    from edgellm.recipe import load_recipe

    configure(0)  # the CLI's quiet output: stage lines, no third-party notices

    if args.wait_quiet > 0:
        from bench.run import wait_until_quiet

        wait_until_quiet(args.wait_quiet)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = fit(load_recipe(args.recipe, args.overrides), target=args.target, output=args.out,
                 min_speedup=args.min_speedup, at_length=args.at_length, max_drop=args.max_drop,
                 budget_minutes=args.budget_minutes, space=args.space or None, work_dir=args.work, overwrite=True,
                 progress=False, echo=print)
    report = (result.output / FIT_FILES["md"]).read_text(encoding="utf-8")
    command = (f"python -m bench.fit_demo --min-speedup {args.min_speedup:g} --at-length {args.at_length} "
               f"--max-drop {args.max_drop:g} --budget-minutes {args.budget_minutes:g}")
    print(report)
    print(headline(result.record))
    if args.no_record:
        return 0 if result.ok else 1
    from bench import RESULTS
    from bench.run import update_readme

    RESULTS.mkdir(parents=True, exist_ok=True)
    for kind in ("json", "md", "png"):
        shutil.copyfile(result.output / FIT_FILES[kind], RESULTS / f"{args.name}.{kind}")
    body = report.split("\n", 2)[2].strip()  # without the page title: the block sits under docs' own heading
    update_readme(ROOT / "docs" / "benchmarks.md", "fit",
                  f"{body}\n\n![frontier](../bench/results/{args.name}.png)\n\nStarted {started}. Reproduce: "
                  f"`{command}`")
    update_readme(ROOT / "README.md", "fit-headline", headline(result.record))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
