"""Reproduce the documented benchmark tables (docs/benchmarks.md) with one command.

    python -m bench.run                          # suite `reference`: artifacts/sentiment-minilm (built by make demo)
    python -m bench.run artifacts/other          # the same suite on another artifact (more paths: compared)
    python -m bench.run --suite minilm-embed     # the MiniLM-L6 FP32 embedding export
    python -m bench.run --suite minilm-embed --readme-only   # re-render tables and the doc block from NAME.json
    python -m bench.run --suite minilm-int8 --build          # first build the suite's artifacts from its recipe
    make bench                                   # = python -m bench.run

Each suite is bench/suites/NAME.yaml (validated: unknown keys and bad values are refused). A suite either names an
artifact to measure, or a recipe and its variants (each a list of `edgellm compress --set` overrides): `--build`
makes every variant with the pipeline into artifacts/NAME/VARIANT, all in one work folder, so that the stages the
variants share (the fine-tuned teacher first) run once and finished ones are reused; the first variant is the main
artifact and the others are compared with it, in the same run. The run writes
bench/results/NAME.json, NAME.md and NAME.png, then replaces the block between `<!-- bench:BLOCK:begin -->` and
`<!-- bench:BLOCK:end -->` in the suite's document (`readme_block: docs/benchmarks.md#BLOCK`, or `BLOCK` alone for
README.md) with NAME.md, so the documented numbers are always the ones the command produced.
Run it alone on the machine (here: under `flock /tmp/edgellm-heavy.lock`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgellm.bench import BenchSettings, run_benchmark, write_results
from edgellm.config import from_dict
from edgellm.errors import ConfigError, EdgeLLMError

if TYPE_CHECKING:
    from edgellm.recipe import Recipe

__all__ = ["Suite", "load_suite", "build_suite", "block_target", "update_readme", "readme_text", "wait_until_quiet",
           "main", "ROOT", "SUITES"]

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "bench" / "suites"
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"


@dataclass
class Suite:
    """One recorded benchmark: what is measured, how, and where its table goes."""

    name: str  # result name: bench/results/NAME.json / .md / .png
    artifact: str = ""  # artifact measured (every model entry); relative paths are from the repository root; empty with `recipe`
    compare: list[str] = field(default_factory=list)  # more artifacts measured in the same run
    models: list[str] | None = None  # only these model entries of the main artifact; None: all
    teacher: str | None = None  # the baselines' teacher folder; None: the manifest's source model
    produced_by: str = ""  # the command that builds `artifact`, shown when it is missing
    readme_block: str | None = None  # block replaced by the table: BLOCK (in README.md) or PATH#BLOCK (PATH from the repository root); None: no document is touched
    settings: BenchSettings = field(default_factory=BenchSettings)
    recipe: str | None = None  # export/X.yaml: the suite's artifacts are its variants, made by `--build` with `edgellm compress`
    set: list[str] = field(default_factory=list)  # KEY=VALUE recipe overrides (as `edgellm compress --set`) for every variant
    variants: dict[str, list[str]] = field(default_factory=dict)  # NAME -> its own overrides, built at artifacts/SUITE/NAME; the first is the main artifact
    work_dir: str | None = None  # the work folder (stage cache) every variant is built in; None: artifacts/SUITE.work

    def validate(self, where: str) -> None:
        if self.recipe is None:
            if self.variants or self.set or self.work_dir:
                raise ConfigError(f"{where}: variants, set and work_dir describe builds of a recipe; add recipe: "
                                  "export/X.yaml, or remove them")
            if not self.artifact:
                raise ConfigError(f"{where}: give artifact (a folder to measure), or recipe and variants")
            return
        if self.artifact:
            raise ConfigError(f"{where}: give artifact or recipe, not both (a recipe's variants are built at "
                              f"artifacts/{self.name}/VARIANT and measured)")
        if not self.variants:
            raise ConfigError(f"{where}: a recipe suite needs variants, e.g. {{default: []}} for the recipe as it is")
        for variant, overrides in self.variants.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(variant)):
                raise ConfigError(f"{where}.variants: {variant!r} is not a folder name (letters, digits, . _ -)")
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise ConfigError(f"{where}.variants.{variant} must be a list of KEY=VALUE strings, not "
                                  f"{overrides!r:.80} (quote an override whose value holds [ ] or :)")
        self.builds()  # every variant's recipe is valid before any work starts

    def builds(self) -> list[tuple[str, Path, Recipe]]:
        """(variant, output folder, recipe) of every variant, in order; a bad override is a ConfigError naming the
        suite, the variant and the recipe key."""
        from edgellm.recipe import load_recipe

        out = []
        for variant, overrides in self.variants.items():
            try:
                recipe = load_recipe(_from_root(str(self.recipe)), [*self.set, *overrides])
            except ConfigError as exc:
                raise ConfigError(f"suite {self.name!r}, variant {variant!r}: {exc}") from exc
            out.append((variant, ROOT / "artifacts" / self.name / variant, recipe))
        return out

    @property
    def work_folder(self) -> Path | None:
        """Where the variants' stages are cached (None for a suite without a recipe)."""
        if self.recipe is None:
            return None
        return _from_root(self.work_dir or f"artifacts/{self.name}.work")

    def paths(self) -> list[Path]:
        """The artifacts measured: the main one first, then the compared ones."""
        main = [out for _, out, _ in self.builds()] if self.recipe else [_from_root(self.artifact)]
        return [*main, *map(_from_root, self.compare)]

    def build_command(self) -> str:
        """How the suite's artifacts are made (shown when one is missing)."""
        return f"python -m bench.run --suite {self.name} --build" if self.recipe else self.produced_by


def load_suite(name_or_path: str) -> Suite:
    """bench/suites/NAME.yaml, or a YAML file path."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES.glob("*.yaml"))
        raise ConfigError(f"benchmark suite {name_or_path!r} not found ({path}); known suites: {known}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return from_dict(Suite, data, where=path.name)


def build_suite(suite: Suite, *, echo: Callable[[str], None] = print, progress: bool = False) -> list[Path]:
    """Make every variant of a recipe suite with the pipeline (`edgellm compress`), all in the suite's one work
    folder: stages the variants share run once, finished ones are reused, and each artifact is replaced atomically.
    Returns the artifact folders, main first."""
    from edgellm.pipeline import compress

    if suite.recipe is None:
        raise ConfigError(f"suite {suite.name!r} has no recipe to build; it measures {suite.artifact} "
                          f"({suite.produced_by or 'built elsewhere'})")
    builds = suite.builds()  # all validated before the first stage runs
    for variant, out, recipe in builds:
        echo(f"[{suite.name}] variant {variant} -> {out}")
        compress(recipe, out, overwrite=True, work_dir=suite.work_folder, progress=progress, echo=echo)
    return [out for _, out, _ in builds]


def _markers(block: str) -> tuple[str, str]:
    return f"<!-- bench:{block}:begin -->", f"<!-- bench:{block}:end -->"


def block_target(spec: str) -> tuple[Path, str]:
    """Where a suite's table goes: "docs/benchmarks.md#reference" -> (docs/benchmarks.md beside README.md,
    "reference"); a bare "reference" -> (README.md, "reference")."""
    path, sep, block = spec.rpartition("#")
    if not sep:
        return README, spec
    if not path or not block or Path(path).is_absolute() or ".." in Path(path).parts:
        raise ConfigError(f"readme_block {spec!r}: write PATH#BLOCK with PATH inside the repository "
                          "(e.g. docs/benchmarks.md#reference), or BLOCK alone for README.md")
    return README.parent / path, block


def update_readme(readme: Path, block: str, text: str) -> bool:
    """Replace the text between the markers for `block` in the document `readme` (README.md or a docs/ page) with
    `text`; True when the file changed."""
    begin, end = _markers(block)
    content = readme.read_text(encoding="utf-8")
    start, stop = content.find(begin), content.find(end)
    if start < 0 or stop < start:
        raise ConfigError(f"{readme} has no block {begin} ... {end}; add both markers where the table belongs")
    updated = content[: start + len(begin)] + "\n" + text.strip() + "\n" + content[stop:]
    if updated == content:
        return False
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(updated, encoding="utf-8")
    os.replace(tmp, readme)
    return True


def wait_until_quiet(limit_s: float, *, threshold: float = 0.25, window_s: float = 5.0) -> float | None:
    """Wait until other processes use fewer than `threshold` cores over `window_s`, for at most `limit_s`
    seconds; return the last reading (None where /proc/stat is absent)."""
    from edgellm.bench import CpuMonitor

    deadline = time.monotonic() + limit_s
    while True:
        with CpuMonitor() as monitor:
            time.sleep(window_s)
        other = monitor.result.get("other_cores")
        if other is None or other < threshold or time.monotonic() >= deadline:
            logging.getLogger("bench.run").info("other processes use %s cores", other)
            return other


def _from_root(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def readme_text(markdown: str, png: str, title: str) -> str:
    """A result's Markdown for README (its own `###` title dropped: README's section names it) and its plot."""
    body = markdown.split("\n", 2)[2] if markdown.startswith("### ") else markdown
    return f"{body.strip()}\n\n![{title}]({png})\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="*", help="artifact(s) to measure instead of the suite's (first = main)")
    parser.add_argument("--suite", default="reference", help="bench/suites/NAME.yaml (default: reference)")
    parser.add_argument("--build", action="store_true",
                        help="first build the suite's recipe variants (edgellm compress, one shared work folder)")
    parser.add_argument("--no-readme", action="store_true", help="do not update the suite's document block")
    parser.add_argument("--readme-only", action="store_true",
                        help="measure nothing: re-render NAME.md, NAME.png and the document block from NAME.json")
    parser.add_argument("--output-dir", default=str(RESULTS), help="where results go (default: bench/results)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS until other processes leave the cores idle")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        suite = load_suite(args.suite)
        if args.build and (args.artifacts or args.readme_only):
            sys.stderr.write("bench.run: --build makes the suite's own artifacts; give no artifact paths and no "
                             "--readme-only with it\n")
            return 2
        if args.build:
            build_suite(suite, echo=lambda line: sys.stdout.write(line + "\n"))
        if args.readme_only:
            recorded = Path(args.output_dir) / f"{suite.name}.json"
            if not recorded.is_file():
                sys.stderr.write(f"bench.run: no recorded result {recorded}; run the suite first (without "
                                 "--readme-only)\n")
                return 2
            result = json.loads(recorded.read_text(encoding="utf-8"))
            result["paths"] = write_results(result, args.output_dir, suite.name)
        else:
            paths = [Path(a) for a in args.artifacts] or suite.paths()
            for path in paths:
                if not path.exists():
                    how = f"build it first: {suite.build_command()}" if suite.build_command() and not args.artifacts \
                        else "give an existing artifact folder"
                    sys.stderr.write(f"bench.run: artifact {path} does not exist; {how} "
                                     f"(or pass artifact paths: python -m bench.run PATH [PATH ...])\n")
                    return 2
            if args.wait_quiet > 0:
                wait_until_quiet(args.wait_quiet)
            command = "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
            result = run_benchmark(paths[0], compare=paths[1:], models=suite.models,
                                   teacher=str(_from_root(suite.teacher)) if suite.teacher else None,
                                   settings=suite.settings, name=suite.name, output_dir=args.output_dir,
                                   command=command.strip(), work_dir=None if args.artifacts else suite.work_folder)
    except EdgeLLMError as exc:
        sys.stderr.write(f"bench.run: error ({type(exc).__name__}): {exc}\n")
        return 1
    table = Path(result["paths"]["md"]).read_text(encoding="utf-8")
    sys.stdout.write(table)
    if suite.readme_block and not args.no_readme and not args.artifacts:
        try:
            document, block = block_target(suite.readme_block)
        except EdgeLLMError as exc:
            sys.stderr.write(f"bench.run: error ({type(exc).__name__}): {exc}\n")
            return 1
        png = os.path.relpath(result["paths"]["png"], document.parent)
        title = f"{suite.name}: " + ("time per token vs perplexity" if result["task"] == "text-generation"
                                     else "latency vs accuracy")
        changed = update_readme(document, block, readme_text(table, png, title))
        sys.stdout.write(f"{document.name} block {block!r} {'updated' if changed else 'unchanged'}\n")
    sys.stdout.write("wrote " + ", ".join(result["paths"].values()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
