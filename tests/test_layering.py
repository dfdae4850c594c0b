"""The module layering, checked on the source: the torch-free runtime imports nothing of the training, export,
quantization, pruning, pipeline or benchmark code, at module level or inside functions."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "edgellm"

# package -> the edgellm packages / modules it must never import
FORBIDDEN = {
    "runtime": ("train", "exporting", "quantize", "prune", "bench", "pipeline", "vocab", "models", "data"),
}


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
        for path in sorted((root / package).rglob("*.py")):
            for line, module in imported_modules(path, root):
                parts = module.split(".")
                if parts[0] == "edgellm" and len(parts) > 1 and parts[1] in banned:
                    out.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return sorted(set(out))


def test_runtime_imports_nothing_above_it() -> None:
    assert layering_violations() == []


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
