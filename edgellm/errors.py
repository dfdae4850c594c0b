"""Typed errors. Every bad input ends in one of these, with a message that names the cause and what to do.

The hierarchy is flat on purpose: catch `EdgeLLMError` for "anything edgellm refused", or one subclass for a
specific cause. Subclasses of ValueError / FileNotFoundError also derive from those built-ins so that callers who
already catch the built-in keep working.
"""

from __future__ import annotations

__all__ = [
    "EdgeLLMError",
    "ConfigError",
    "DataError",
    "ModelError",
    "UnsupportedArchitectureError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "FormatVersionError",
    "IntegrityError",
    "OutputExistsError",
    "ExportError",
    "ExportMismatchError",
    "UnsupportedTargetError",
    "InputError",
    "PruningError",
    "QuantizationError",
    "TrainingError",
    "GenerationError",
    "BackendError",
    "NoPlanError",
]


class EdgeLLMError(Exception):
    """Base class of every error edgellm raises on purpose."""


class ConfigError(EdgeLLMError, ValueError):
    """A recipe, profile or option has a wrong key, type or value."""


class DataError(EdgeLLMError, ValueError):
    """A data set is missing, empty, or lacks the columns / labels the task needs."""


class ModelError(EdgeLLMError, ValueError):
    """A model folder is not a model, or its architecture is not supported by the stage asked for."""


class UnsupportedArchitectureError(ModelError):
    """A stage cannot handle the model's architecture (edgellm.families); raised before the stage does any work."""

    def __init__(self, message: str, *, model_type: str, stage: str) -> None:
        super().__init__(message)
        self.model_type = model_type
        self.stage = stage


class ArtifactError(EdgeLLMError):
    """An artifact folder is missing, incomplete or malformed."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """The artifact folder or its manifest does not exist."""


class FormatVersionError(ArtifactError):
    """The manifest was written by a format version this edgellm cannot read."""


class IntegrityError(ArtifactError):
    """A file in the artifact does not match the sha256 recorded in its manifest, or points outside it."""


class OutputExistsError(EdgeLLMError, FileExistsError):
    """The output folder exists and overwriting was not asked for."""


class ExportError(EdgeLLMError):
    """Exporting a model to ONNX / OpenVINO failed."""


class ExportMismatchError(ExportError):
    """The exported model's outputs differ from torch's by more than the tolerance."""

    def __init__(self, message: str, *, max_abs_diff: float, tolerance: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


class UnsupportedTargetError(EdgeLLMError, ValueError):
    """An unknown backend, device or target profile, or one this machine does not have."""


class InputError(EdgeLLMError, ValueError):
    """Bad input to the runtime: a non-string text, a batch or length over the bounds, a bad generation option."""


class PruningError(EdgeLLMError, ValueError):
    """A pruning target cannot be met (ratio out of range, every head of a layer, unsupported architecture)."""


class QuantizationError(EdgeLLMError, ValueError):
    """Quantization cannot run as asked (no calibration data, already quantized, tolerance not reachable)."""


class TrainingError(EdgeLLMError):
    """Fine-tuning or distillation cannot run as configured."""


class GenerationError(EdgeLLMError, ValueError):
    """Text generation cannot run as asked (no chat template, context exhausted)."""


class BackendError(EdgeLLMError, RuntimeError):
    """ONNX Runtime or OpenVINO failed while loading or running a model; the message carries their reason."""


class NoPlanError(EdgeLLMError):
    """`edgellm fit`: no plan of the searched space meets the budget. `failed` names the constraints no plan could
    meet (with the best value reached), `closest` the plans nearest to meeting every one; `result` is the whole
    FitResult (frontier, files written)."""

    def __init__(self, message: str, *, failed: list[dict] | None = None, closest: list[dict] | None = None,
                 result: object = None) -> None:
        super().__init__(message)
        self.failed = list(failed or [])
        self.closest = list(closest or [])
        self.result = result
