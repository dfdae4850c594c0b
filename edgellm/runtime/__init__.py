"""The torch-free runtime: load an artifact folder and run its task on ONNX Runtime or OpenVINO.

Imports only numpy, onnxruntime / openvino, tokenizers (and jinja2 for chat templates); never torch or
transformers. A test imports it with those blocked.

    from edgellm.runtime import load
    clf = load("artifacts/sentiment-minilm")               # ONNX Runtime on the CPU, the artifact's default model
    clf.classify(["what a film", "a waste of time"])       # [{"label": "positive", "score": 0.99}, ...]
    emb = load("artifacts/minilm-embed", backend="openvino").embed(["a sentence"])   # (1, 384) float32
"""

from __future__ import annotations

from edgellm.runtime.devices import available_devices
from edgellm.runtime.loader import BACKEND_NAMES, load
from edgellm.runtime.tasks import Classifier, EdgeModel, Embedder

__all__ = ["load", "available_devices", "EdgeModel", "Classifier", "Embedder", "BACKEND_NAMES"]
