"""README.md and docs/ cannot drift: every command they show is run or validated here.

Shell blocks (```bash / ```console): each command is dispatched by its program (RULES below). `edgellm ...` is
parsed by click's own `make_context` on the real command (options, choices and arguments validated, nothing
run); `make T` is expanded with `make -n` and the edgellm commands it would run are validated the same way;
`python -m bench.X ...` goes through the script's own argparse parser, stopped right after parsing; launchers
(`torchrun`, `accelerate launch`) have the edgellm part after `-m edgellm.cli` validated. Commands whose artifact
maps to a tiny seeded artifact (ARTIFACTS) are also run for real. A command no rule covers fails the test.
Python blocks are compiled; those in RUN_PYTHON run against the tiny artifacts. YAML blocks with `teacher:` are
validated as recipes. Links must stay inside the repository and resolve.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)

# Documented artifact path -> conftest fixture standing in for it (a tiny seeded model, same task).
ARTIFACTS = {
    "artifacts/minilm-embed": "embedder_artifact",
    "artifacts/sentiment-minilm": "classifier_artifact",
    "artifacts/tickets": "classifier_artifact",
    "artifacts/minilm-devices": "target_artifact",
}
# Which documented commands run for real (on the ARTIFACTS stand-ins), besides being validated.
RUN_SUBCOMMANDS = {"run", "inspect", "verify", "targets"}
# Python blocks run for real: (page, index of the python block on that page); every other block is compiled.
RUN_PYTHON = {("README.md", 0), ("docs/runtime-and-devices.md", 0)}
LAUNCHERS = {"torchrun", "accelerate"}  # their own options are theirs; the edgellm part after -m edgellm.cli is checked


def blocks(lang: str) -> list[tuple[str, int, str]]:
    """(page, index among that page's `lang` blocks, text) of every fenced block of language `lang`."""
    out = []
    for path in DOCS:
        found = [m.group(2) for m in FENCE.finditer(path.read_text(encoding="utf-8")) if m.group(1) == lang]
        out += [(path.relative_to(ROOT).as_posix(), i, text) for i, text in enumerate(found)]
    return out


def shell_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every command in the bash / console blocks: continuations joined, comments, `$ ` prompts
    and redirections removed, `a && b` split."""
    out = []
    for lang in ("bash", "console"):
        for page, _, text in blocks(lang):
            for line in text.replace("\\\n", " ").splitlines():
                line = line.strip()
                if lang == "console":
                    if not line.startswith("$ "):
                        continue  # program output
                    line = line[2:]
                words = shlex.split(line, comments=True)
                while words:
                    cut = words.index("&&") if "&&" in words else len(words)
                    argv, words = words[:cut], words[cut + 1:]
                    for op in ("<", ">"):
                        while op in argv:
                            i = argv.index(op)
                            del argv[i: i + 2]
                    if argv:
                        out.append((page, argv))
    return out


def validate_cli(args: list[str]) -> click.Context:
    """Parse `edgellm ARGS` down to the leaf command with click's make_context (what click does before running);
    a bad option, choice or missing argument raises click.UsageError."""
    from edgellm.cli import cli

    command: click.Command = cli
    ctx = command.make_context("edgellm", list(args), resilient_parsing=False)
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") else [*ctx.protected_args, *ctx.args]
        name, sub, sub_args = command.resolve_command(ctx, rest)
        assert sub is not None, f"edgellm: no command {name!r}"
        ctx = sub.make_context(name, sub_args, parent=ctx)
        command = sub
    return ctx


class _Parsed(Exception):
    pass


def validate_argparse_module(module: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Import `module` and call its main(args) with ArgumentParser.parse_args stopping right after parsing."""
    parsed: list[argparse.Namespace] = []
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *a: Any, **k: Any) -> argparse.Namespace:
        parsed.append(original(self, *a, **k))
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module, *args])  # for the scripts whose main() reads sys.argv itself
    main = importlib.import_module(module).main
    with pytest.raises(_Parsed):
        main(args) if inspect.signature(main).parameters else main()
    return parsed[0]


def make_dry_run(target: str) -> list[list[str]]:
    """The edgellm commands `make -n TARGET` would run (as argv after the program)."""
    out = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    commands = []
    for line in out.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        while words and "=" in words[0]:  # VAR=value prefixes
            words = words[1:]
        if words and Path(words[0]).name == "edgellm":
            commands.append(words[1:])
    return commands


# --- the shell commands ---------------------------------------------------------------------------------------

COMMANDS = shell_commands()


def test_docs_show_commands() -> None:
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "docs/recipe.md", "docs/cli.md", "docs/benchmarks.md"} <= pages
    assert ["make", "demo"] in [argv for _, argv in COMMANDS] and ["make", "test"] in [argv for _, argv in COMMANDS]


@pytest.mark.parametrize("page,argv", COMMANDS, ids=[f"{p}:{' '.join(a)[:60]}" for p, a in COMMANDS])
def test_shell_command_is_valid(page: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    program, args = argv[0], argv[1:]
    if program == "edgellm":
        try:
            validate_cli(args)
        except click.exceptions.Exit as done:  # --help / --version: eager options that end parsing
            assert done.exit_code == 0
    elif program == "make":
        assert len(args) == 1, argv
        for edgellm_args in make_dry_run(args[0]):
            validate_cli(edgellm_args)
    elif program == "python" and args[:1] == ["-m"]:
        module = args[1]
        assert module.startswith("bench."), f"{page}: no rule for python -m {module}"
        validate_argparse_module(module, args[2:], monkeypatch)
    elif program in LAUNCHERS:
        i = args.index("-m")
        assert args[i + 1] == "edgellm.cli", argv
        validate_cli(args[i + 2:])
    else:
        pytest.fail(f"{page}: no rule for the command {shlex.join(argv)!r}; add one to tests/test_docs.py")


def test_make_demo_and_test_run_what_readme_says() -> None:
    assert make_dry_run("demo")[0][:3] == ["compress", "export/sentiment-minilm.yaml", "-o"]
    assert "pytest" in subprocess.run(["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True,
                                      check=True).stdout


def test_validation_refuses_a_bad_option(monkeypatch: pytest.MonkeyPatch) -> None:
    # the mechanisms above really check options: each of these is a typo a doc could carry
    with pytest.raises(click.UsageError, match="--epoch"):
        validate_cli(["distill", "embedded:all-MiniLM-L6-v2", "-o", "x", "--epoch", "2"])
    with pytest.raises(click.BadParameter):
        validate_cli(["quantize", "a", "--mode", "int3"])
    with pytest.raises(SystemExit):  # argparse exits 2 on an unknown option
        validate_argparse_module("bench.run", ["--suites", "reference"], monkeypatch)


def _stand_in(args: list[str], request: pytest.FixtureRequest) -> list[str] | None:
    """`args` with every documented artifact path replaced by its tiny stand-in; None when one has none."""
    out = []
    for a in args:
        if a.startswith("artifacts/"):
            if a not in ARTIFACTS:
                return None
            a = str(request.getfixturevalue(ARTIFACTS[a]))
        out.append(a)
    return out


RUNNABLE = [(p, a) for p, a in COMMANDS if a[0] == "edgellm" and len(a) > 1 and a[1] in RUN_SUBCOMMANDS]


@pytest.mark.parametrize("page,argv", RUNNABLE, ids=[f"{p}:{' '.join(a)[:60]}" for p, a in RUNNABLE])
def test_runtime_commands_run_on_tiny_artifacts(page: str, argv: list[str], request: pytest.FixtureRequest) -> None:
    from click.testing import CliRunner

    from edgellm.cli import cli

    args = _stand_in(argv[1:], request)
    if args is None:
        pytest.fail(f"{page}: {shlex.join(argv)} names an artifact without a stand-in; add it to ARTIFACTS")
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.strip()


def test_console_help_runs() -> None:
    from click.testing import CliRunner

    from edgellm.cli import cli

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "compress" in result.output


def test_every_edgellm_command_named_in_prose_exists() -> None:
    from edgellm.cli import cli

    named = set()
    for path in DOCS:
        named |= set(re.findall(r"`edgellm ([a-z]+)", path.read_text(encoding="utf-8")))
    missing = sorted(n for n in named if n not in cli.commands)
    assert not missing, f"docs name edgellm commands that do not exist: {missing}"


# --- python and yaml blocks ------------------------------------------------------------------------------------

PYTHON = blocks("python")


@pytest.mark.parametrize("page,index,text", PYTHON, ids=[f"{p}#{i}" for p, i, _ in PYTHON])
def test_python_block_compiles(page: str, index: int, text: str) -> None:
    compile(text, f"{page} python block {index}", "exec")


@pytest.mark.parametrize("page,index", sorted(RUN_PYTHON))
def test_python_block_runs_on_tiny_artifacts(page: str, index: int, request: pytest.FixtureRequest) -> None:
    text = next(t for p, i, t in PYTHON if (p, i) == (page, index))
    for documented, fixture in ARTIFACTS.items():
        text = text.replace(f'"{documented}"', repr(str(request.getfixturevalue(fixture)))) \
            if f'"{documented}"' in text else text
    assert '"artifacts/' not in text, f"{page} python block {index} uses an artifact without a stand-in"
    exec(compile(text, f"{page} python block {index}", "exec"), {"__name__": "__docs__"})


def test_yaml_recipes_are_valid() -> None:
    import yaml

    from edgellm.recipe import recipe_from_dict

    recipes = [(p, yaml.safe_load(t)) for p, _, t in blocks("yaml")]
    recipes = [(p, d) for p, d in recipes if isinstance(d, dict) and "teacher" in d]
    assert len(recipes) >= 2  # README's custom recipe, training.md's distill recipe
    for page, data in recipes:
        recipe_from_dict(data, where=page)


# --- README's shape, links, generated parts -------------------------------------------------------------------

def test_readme_is_short_and_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) < 15_000
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    for stage_module in ("edgellm/train", "edgellm/prune", "edgellm/vocab.py", "edgellm/exporting",
                         "edgellm/quantize", "edgellm/pipeline.py", "edgellm/runtime"):
        assert stage_module in readme


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_stay_inside_the_repository_and_resolve() -> None:
    for path in [*DOCS, ROOT / "CHANGELOG.md"]:
        text = FENCE.sub("", path.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            assert not re.match(r"[a-z]+:", target), f"{path.name}: link {target} leaves the repository"
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.is_relative_to(ROOT) and dest.exists(), f"{path.name}: link {target} does not resolve"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", FENCE.sub("", dest.read_text(encoding="utf-8")), re.M)
                assert anchor in {_slug(h) for h in headings}, f"{path.name}: no heading for #{anchor} in {file}"
        assert "../shared" not in text and "BASELINES.md" not in text, path.name


def test_headline_table_is_the_recorded_reference_run() -> None:
    result = json.loads((ROOT / "bench" / "results" / "reference.json").read_text(encoding="utf-8"))
    subjects = {s["name"]: s for s in result["subjects"]}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## What it reaches\n", 1)[1].split("\n## ", 1)[0]  # other tables reuse the names
    rows = {cells[0]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| "))}
    for name in ("teacher-pytorch-fp32", "onnx-int8"):
        s = subjects[name]
        assert rows[name][1:] == [s["engine"], f"{s['size_mb']:.1f}", f"{s['accuracy_pct']:.2f}",
                                  f"{s['latency']['128']['p50_ms']:.2f}", f"{s['latency']['real']['p50_ms']:.2f}",
                                  f"{s['cold_start_s']:.2f}", f"{s['peak_rss_mb']:.0f}"], name
    final = subjects["onnx-int8"]["vs_teacher"]
    assert (f"{final['size_ratio']:.1f}x smaller and {final['p50_speedup']:.1f}x faster at 128 tokens, keeping "
            f"{final['accuracy_retained_pct']:.1f}% of the teacher's accuracy") in readme


def test_recipe_reference_is_up_to_date() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        gen_recipe = importlib.import_module("gen_recipe")
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert gen_recipe.main(["--check"]) == 0, "docs/recipe.md is out of date: run python docs/gen_recipe.py"
    assert "| `temperature` | `float` | `2.0` | softening of both distributions in the KD term |" in \
        (ROOT / "docs" / "recipe.md").read_text(encoding="utf-8")


def test_every_benchmark_block_has_its_markers() -> None:
    from bench.run import _markers, block_target, load_suite

    targets = [load_suite(p.stem).readme_block for p in sorted((ROOT / "bench" / "suites").glob("*.yaml"))]
    targets += ["docs/benchmarks.md#lm-student", "docs/benchmarks.md#lm-frontier",  # bench/lm_student.py, lm_frontier.py
                "lm-student-headline",  # README, by bench/lm_student.py
                "docs/benchmarks.md#fit", "fit-headline",  # bench/fit_demo.py
                "llm-teacher-headline"]  # README, by bench/llm_teacher.py
    for spec in targets:
        document, block = block_target(spec)
        begin, end = _markers(block)
        text = document.read_text(encoding="utf-8")
        assert text.count(begin) == 1 and text.count(end) == 1 and text.index(begin) < text.index(end), spec


def test_text_generation_page_keeps_its_marker() -> None:
    first = (ROOT / "docs" / "text-generation.md").read_text(encoding="utf-8").splitlines()[0]
    assert first == "<!-- lm-pipeline: updated by the text-generation pipeline work -->"


def test_a_suite_block_can_live_in_a_docs_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.run as bench_run
    from edgellm.errors import ConfigError

    monkeypatch.setattr(bench_run, "README", tmp_path / "README.md")
    assert bench_run.block_target("reference") == (tmp_path / "README.md", "reference")
    page, block = bench_run.block_target("docs/benchmarks.md#reference")
    assert (page, block) == (tmp_path / "docs" / "benchmarks.md", "reference")
    page.parent.mkdir()
    page.write_text("# B\n\n<!-- bench:reference:begin -->\nold\n<!-- bench:reference:end -->\n")
    assert bench_run.update_readme(page, block, "| new |") is True
    assert page.read_text() == "# B\n\n<!-- bench:reference:begin -->\n| new |\n<!-- bench:reference:end -->\n"
    for bad in ("../elsewhere.md#x", "/abs/page.md#x", "docs/benchmarks.md#", "#x"):
        with pytest.raises(ConfigError, match="PATH#BLOCK"):
            bench_run.block_target(bad)
