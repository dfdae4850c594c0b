"""edgellm: turn a language model into a small, fast, verified model for edge devices, and run it there.

Short path::

    import edgellm
    model = edgellm.load("artifacts/sentiment-minilm")
    model("what a film")          # -> [{"label": "positive", "score": 0.98}]

Nothing heavy is imported here: `load` pulls in the torch-free runtime on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(artifact: str, **options: Any) -> Any:
    """Load an artifact folder with the torch-free runtime; see `edgellm.runtime.load`."""
    from edgellm.runtime import load as _load

    return _load(artifact, **options)
