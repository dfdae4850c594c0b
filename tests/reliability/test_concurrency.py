"""One loaded model shared by 8 threads x 200 calls gives, call for call, what sequential calls give (ONNX Runtime
and OpenVINO; classifier and embedder). The calls differ in texts and batch size, so that a buffer, tokenizer
setting or infer request shared by mistake between threads shows up as a wrong row."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from edgellm.runtime import load

THREADS = 8
CALLS = 200  # per thread
TEXTS = [
    "a great film",
    "the worst movie i have ever seen, a waste of money and two hours",
    "",
    "fun",
    "the acting was good but the script was dull and the ending too long " * 4,  # truncated to max_length
    "I loved it! 我很喜欢这部电影。 Ça m'a plu.",
    "boring\tboring\nboring",
    "brilliant music, terrible plot",
]


def call_texts(k: int) -> list[str]:
    """The texts of call k: 1 to 4 of them, in a rotating order."""
    start = k % len(TEXTS)
    return [TEXTS[(start + j * 3) % len(TEXTS)] for j in range(1 + k % 4)]


def run_threads(fn: Callable[[list[str]], Any]) -> dict[int, Any]:
    """THREADS threads, each making CALLS calls of `fn` on `call_texts`, started together; {call number: result}."""
    return run_calls(lambda k: fn(call_texts(k)), threads=THREADS, calls=CALLS)


def run_calls(call: Callable[[int], Any], *, threads: int, calls: int) -> dict[int, Any]:
    """`threads` threads, each making `calls` calls `call(k)` (k: the call's number), started together;
    {k: result}."""
    barrier = threading.Barrier(threads)

    def worker(t: int) -> dict[int, Any]:
        barrier.wait()
        return {t * calls + c: call(t * calls + c) for c in range(calls)}

    results: dict[int, Any] = {}
    with ThreadPoolExecutor(threads) as pool:
        for part in pool.map(worker, range(threads)):
            results.update(part)
    return results


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_classifier_from_8_threads_equals_sequential(backend: str, classifier_artifact: Path) -> None:
    clf = load(classifier_artifact, backend=backend, threads=1)
    assert clf.backend.name == backend
    sequential = {k: clf.scores(call_texts(k)) for k in range(THREADS * CALLS)}
    labels = {k: clf.classify(call_texts(k), top_k=2) for k in range(0, THREADS * CALLS, 97)}
    threaded = run_threads(clf.scores)
    assert sorted(threaded) == list(range(THREADS * CALLS))
    for k, want in sequential.items():
        np.testing.assert_array_equal(threaded[k], want, err_msg=f"call {k}")
    assert len({tuple(np.round(s[0], 6)) for s in sequential.values()}) >= 4  # the calls really differ
    for k, want in labels.items():  # classify() in threads too: same labels and scores
        assert clf.classify(call_texts(k), top_k=2) == want


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_embedder_from_8_threads_equals_sequential(backend: str, embedder_artifact: Path) -> None:
    emb = load(embedder_artifact, backend=backend, threads=1)
    assert emb.backend.name == backend
    sequential = {k: emb.embed(call_texts(k)) for k in range(THREADS * CALLS)}
    threaded = run_threads(emb.embed)
    for k, want in sequential.items():
        assert threaded[k].shape == (len(call_texts(k)), emb.dim)
        np.testing.assert_array_equal(threaded[k], want, err_msg=f"call {k}")


def test_openvino_keeps_one_infer_request_per_thread(classifier_artifact: Path) -> None:
    clf = load(classifier_artifact, backend="openvino", threads=1)
    requests: set[int] = set()
    lock = threading.Lock()

    def call(texts: list[str]) -> Any:
        out = clf.scores(texts)
        with lock:
            requests.add(id(clf.backend._local.request))
        return out

    run_threads(call)
    assert len(requests) == THREADS


GEN_THREADS = 4
GEN_CALLS = 10  # per thread
PROMPTS = ["The movie was", "Once upon a time", "我很喜欢这部电影", "a b c d e f g h i j k", "!"]


def gen_call(gen: Any, k: int) -> Any:
    """Call k: a prompt, a length, greedy or seeded sampling, whole text, pieces or chat, by k."""
    opts: dict[str, Any] = {"max_new_tokens": 2 + k % 6, "ignore_eos": True}
    if k % 2:
        opts.update(temperature=0.9, top_k=20, top_p=0.95, seed=k)
    prompt = PROMPTS[k % len(PROMPTS)]
    if k % 5 == 4:
        return gen.chat([{"role": "user", "content": prompt}], **opts)
    if k % 3 == 0:
        return list(gen.stream(prompt, **opts))
    return gen.generate(prompt, **opts)


@pytest.mark.parametrize("model", ["onnx-fp32", "onnx-int8-dynamic", "openvino-fp32"])
def test_generator_from_4_threads_equals_sequential(model: str, lm_artifact: Path) -> None:
    """Every call decodes in a KV cache of its own (a bound buffer, a copied past or an infer request), so
    generations may run at once; a cache shared by mistake would give some call another call's tokens."""
    gen = load(lm_artifact, model=model, threads=1)
    total = GEN_THREADS * GEN_CALLS
    sequential = {k: gen_call(gen, k) for k in range(total)}
    threaded = run_calls(lambda k: gen_call(gen, k), threads=GEN_THREADS, calls=GEN_CALLS)
    assert threaded == sequential
    assert len({str(v) for v in sequential.values()}) >= total // 2  # the calls really differ


@pytest.mark.parametrize("model", ["onnx-fp32", "openvino-fp32"])
def test_interleaved_streams_of_one_generator_keep_their_own_cache(model: str, lm_artifact: Path) -> None:
    gen = load(lm_artifact, model=model, threads=1)
    opts = {"max_new_tokens": 12, "ignore_eos": True}
    alone = [gen.generate(p, **opts) for p in PROMPTS[:3]]
    streams = {i: gen.stream(p, **opts) for i, p in enumerate(PROMPTS[:3])}
    pieces: dict[int, list[str]] = {i: [] for i in streams}
    while streams:  # one piece of each open stream in turn
        for i, stream in list(streams.items()):
            piece = next(stream, None)
            if piece is None:
                del streams[i]
            else:
                pieces[i].append(piece)
    assert ["".join(pieces[i]) for i in range(3)] == alone
    assert max(len(p) for p in pieces.values()) > 1  # the streams really took turns
