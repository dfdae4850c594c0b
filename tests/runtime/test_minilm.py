"""The real MiniLM-L6 teacher: runtime embeddings (ORT and OpenVINO) equal torch mean-pooled ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_minilm

pytestmark = [needs_minilm, pytest.mark.assets]


@pytest.fixture(scope="module")
def minilm_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgellm.exporting import export

    out = tmp_path_factory.mktemp("minilm") / "minilm"
    export("embedded:all-MiniLM-L6-v2", out, task="feature-extraction", max_length=128)
    return out


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    from edgellm.data import load_vader

    rows = load_vader("movie-reviews")
    return [text for text, _ in rows[:100]]


def torch_embeddings(texts: list[str]) -> np.ndarray:
    """sentence-transformers' recipe by hand: mean pooling over the mask, then L2 normalisation."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgellm.models import resolve_model

    path = resolve_model("embedded:all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 16):
            enc = tok(texts[i : i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out)


def test_minilm_embeddings_match_torch(minilm_artifact: Path, sentences: list[str]) -> None:
    from edgellm.runtime import load

    assert len(sentences) == 100
    expected = torch_embeddings(sentences)
    for backend in ("onnxruntime", "openvino"):
        got = load(minilm_artifact, backend=backend).embed(sentences)
        assert got.shape == (100, 384)
        diff = float(np.abs(got - expected).max())
        assert diff < 1e-4, f"{backend}: max abs diff {diff}"
