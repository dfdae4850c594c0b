"""edgellm: turn a language model into a small, fast, verified model for edge devices, and run it there.

Short path::

    import edgellm
    model = edgellm.load("artifacts/sentiment-minilm")
    model("what a film")          # -> [{"label": "positive", "score": 0.98}]

Nothing heavy is imported here: `load` pulls in the torch-free runtime on first use.
"""

from __future__ import annotations

import logging
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


# Import-time chatter of optional dependencies that says nothing about edgellm's work: transformers imports torchao
# when it is installed (it comes with the full toolchain), which logs "Failed to load ..._C_*.so" for CUDA kernels,
# "Detected no triton" and torch's _pytree deprecation notes. Errors from these loggers still show.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def load(artifact: str, **options: Any) -> Any:
    """Load an artifact folder with the torch-free runtime; see `edgellm.runtime.load`."""
    from edgellm.runtime import load as _load

    return _load(artifact, **options)
