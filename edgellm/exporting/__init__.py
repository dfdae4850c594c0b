"""Export layer: Hugging Face models -> checked ONNX / OpenVINO files (encoders: `encoder`, decoders: `decoder`,
`fused_decoder`; device profiles: `target`). This package only re-exports the encoder entry points.

    from edgellm.exporting import export
    manifest = export("path/to/model", "artifacts/minilm", task="feature-extraction")
"""

from __future__ import annotations

from edgellm.exporting.encoder import (
    DEFAULT_ATOL,
    ENCODER_TASKS,
    FORMATS,
    encoder_manifest,
    export,
    model_runner,
    validation_batches,
    write_encoder_models,
)

__all__ = ["export", "write_encoder_models", "validation_batches", "encoder_manifest", "model_runner", "ENCODER_TASKS",
           "FORMATS", "DEFAULT_ATOL"]
