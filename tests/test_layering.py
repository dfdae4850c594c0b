"""The module layering, checked on the source (module-level and function-level imports alike):

    cli
    fit                                              searches plans: runs the pipeline's stages many times
    pipeline, pipeline_lm, bench                     the verbs that run stages
    train | prune | exporting | quantize             the stages (prune may reuse train's loop for recovery;
                                                     quantize builds on exporting's checks, never the reverse)
    data, models, recipe, evaluate, vocab, targets   inputs, configs, metrics
    runtime                                          torch-free: numpy, onnxruntime / openvino, tokenizers
    artifact, config, errors, console, ...

and no package `__init__` does more than re-export."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "edgellm"

# package -> the edgellm packages / modules it must never import
STAGES_AND_UP = ("pipeline", "pipeline_lm", "bench", "fit", "cli")
FORBIDDEN = {
    "runtime": ("train", "exporting", "quantize", "prune", "vocab", "models", "data", "recipe", "evaluate",
                *STAGES_AND_UP),
    "evaluate": ("train", "exporting", "quantize", "prune", "models", "data", *STAGES_AND_UP),
    "train": ("exporting", "quantize", "prune", *STAGES_AND_UP),
    "prune": ("exporting", "quantize", *STAGES_AND_UP),
    "exporting": ("quantize", "train", "prune", *STAGES_AND_UP),
    "quantize": ("train", "prune", *STAGES_AND_UP),
    "bench": ("exporting", "quantize", "prune", "pipeline", "pipeline_lm", "fit", "cli"),
    "pipeline": ("fit", "cli"),
    "pipeline_lm": ("fit", "cli"),
}
# The top-level package re-exports `load` as a function that imports the runtime on first use (so that
# `import edgellm` loads neither numpy nor onnxruntime); every other __init__ only imports and lists names.
LAZY_FACADE = "edgellm/__init__.py"


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved, function-level ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def layering_violations(root: Path = ROOT) -> list[str]:
    out = []
    for package, banned in FORBIDDEN.items():
        files = sorted((root / package).rglob("*.py")) if (root / package).is_dir() else [root / f"{package}.py"]
        for path in files:
            for line, module in imported_modules(path, root):
                parts = module.split(".")
                if parts[0] == "edgellm" and len(parts) > 1 and parts[1] in banned:
                    out.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return sorted(set(out))


def init_violations(root: Path = ROOT) -> list[str]:
    """Statements of package __init__ files other than the docstring, imports and `__all__` / `__version__`."""
    out = []
    for path in sorted(root.rglob("__init__.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel == LAZY_FACADE:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for i, node in enumerate(tree.body):
            if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id in ("__all__", "__version__")
                                                    for t in node.targets):
                continue
            out.append(f"{rel}:{node.lineno} {type(node).__name__}")
    return out


def test_no_layer_imports_one_above_it() -> None:
    assert layering_violations() == []


def test_package_inits_only_re_export() -> None:
    assert init_violations() == []


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    """A copy of the package with one function-level import of the trainer in the runtime fails the check."""
    copy = tmp_path / "edgellm"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "runtime" / "generate.py"
    target.write_text(target.read_text() + "\n\ndef _sneak() -> None:\n    from ..train import loop  # noqa\n")
    assert layering_violations(copy) == [
        f"edgellm/runtime/generate.py:{len(target.read_text().splitlines())} imports edgellm.train",
        f"edgellm/runtime/generate.py:{len(target.read_text().splitlines())} imports edgellm.train.loop",
    ]


def test_the_check_catches_exporting_importing_quantize_and_code_in_an_init(tmp_path: Path) -> None:
    copy = tmp_path / "edgellm"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "exporting" / "decoder.py"
    target.write_text(target.read_text() + "\n\ndef _sneak() -> None:\n    from edgellm.quantize import nbits  # noqa\n")
    line = len(target.read_text().splitlines())
    assert f"edgellm/exporting/decoder.py:{line} imports edgellm.quantize" in layering_violations(copy)
    init = copy / "prune" / "__init__.py"
    init.write_text(init.read_text() + "\n\nLIMIT = 3\n")
    assert init_violations(copy) == [f"edgellm/prune/__init__.py:{len(init.read_text().splitlines())} Assign"]
