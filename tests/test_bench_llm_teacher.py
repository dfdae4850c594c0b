"""bench/llm_teacher.py: issue 14's targets checked on a recorded suite result (no measurement here)."""

from __future__ import annotations

from typing import Any

from bench.llm_teacher import checks, headline


def _subject(name: str, kind: str, precision: str, ppl: float, decode: float, first_ms: float,
             stage: str = "int8") -> dict[str, Any]:
    return {"name": name, "kind": kind, "stage": "peer" if kind == "peer" else stage, "precision": precision,
            "engine": "peer engine" if kind == "peer" else "edgellm", "perplexity": ppl,
            "generation": {"decode_tokens_per_s": decode, "time_to_first_token_ms": first_ms}}


def _result(*subjects: dict[str, Any]) -> dict[str, Any]:
    teacher = _subject("teacher-pytorch-fp32", "pytorch", "fp32", 100.0, 20.0, 200.0, stage="teacher")
    return {"subjects": [teacher, *subjects], "machine": {"cpu_model": "Test CPU"}, "created": "2026-12-01T00:00:00Z",
            "settings": {"threads": 2, "prompt_tokens": 128, "new_tokens": 128}}


def test_checks_pick_the_fastest_model_within_the_quality_line() -> None:
    result = _result(
        _subject("onnx-int8", "edgellm", "int8", 100.5, 150.0, 110.0),
        _subject("onnx-int8-lossy", "edgellm", "int8", 103.0, 400.0, 50.0),  # over 1%: never the compared model
        _subject("onnx-int4", "edgellm", "int4", 109.0, 170.0, 130.0),
        _subject("llama.cpp Q8_0", "peer", "Q8_0", 100.6, 126.0, 175.0),
        _subject("onnxruntime-genai int8", "peer", "int8", 100.2, 140.0, 160.0),
        _subject("llama.cpp Q4_0", "peer", "Q4_0", 120.0, 180.0, 180.0),
        _subject("openvino-genai int4", "peer", "int4", 135.0, 100.0, 70.0),
    )
    found = checks(result)
    assert found["8-bit decode"]["edgellm"]["name"] == "onnx-int8"
    assert found["8-bit decode"]["peer"]["name"] == "onnxruntime-genai int8"
    assert found["8-bit decode"]["passed"] is True
    assert found["4-bit decode"]["peer"]["name"] == "llama.cpp Q4_0"  # the fastest 4-bit peer, whatever its quality
    assert found["4-bit decode"]["passed"] is False
    assert found["first token"]["edgellm"]["name"] == "onnx-int8" and found["first token"]["peer"]["first_ms"] == 70.0
    assert found["first token"]["passed"] is False  # 110 > 1.5 x 70
    text = headline(result)
    assert "| onnx-int8-lossy | edgellm | 1.030 | 400.0 | 50 |" in text  # shown in the table, never compared
    assert "met (onnx-int8 150.0 vs onnxruntime-genai int8 140.0)" in text
    assert "**not met** (onnx-int4 170.0 vs llama.cpp Q4_0 180.0)" in text


def test_a_missing_peer_leaves_its_target_unmeasured() -> None:
    missing = {**_subject("llama.cpp Q4_0", "peer", "Q4_0", 120.0, 180.0, 180.0), "missing": True, "generation": None}
    found = checks(_result(_subject("onnx-int4", "edgellm", "int4", 105.0, 170.0, 130.0), missing))
    assert found["4-bit decode"]["passed"] is None and found["8-bit decode"]["edgellm"] is None
    assert "not measured (a side is missing)" in headline(_result(missing))
