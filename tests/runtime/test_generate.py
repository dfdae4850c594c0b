"""The text generator: sampling rules, streaming, stop strings / tokens, chat templates, bad inputs, CLI, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgellm.errors import GenerationError, InputError
from edgellm.runtime.generate import (
    GenerationOptions,
    PromptTruncatedWarning,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    log_softmax,
    next_token,
    render_chat,
    token_log_probs,
)


@pytest.fixture(scope="module")
def gen(lm_artifact: Path) -> Any:
    from edgellm.runtime import load

    return load(lm_artifact, model="onnx-fp32", threads=1)


# -- sampling rules (pure numpy) -------------------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = np.array([2.0, -1.0, 0.5, 3.0])
    out = apply_repetition_penalty(logits, np.array([0, 1, 1]), 2.0)
    np.testing.assert_array_equal(out, [1.0, -2.0, 0.5, 3.0])  # token 1 seen twice: penalised once
    assert apply_repetition_penalty(logits, np.array([0]), 1.0) is logits


def test_top_k_and_top_p_filters() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert np.isneginf(filter_top_k(logits, 2)).tolist() == [False, False, True, True]
    assert filter_top_k(logits, 0) is logits  # 0 = off
    assert np.isneginf(filter_top_p(logits, 0.8)).tolist() == [False, False, True, True]  # 0.5 + 0.3 reaches 0.8
    assert np.isneginf(filter_top_p(logits, 0.81)).tolist() == [False, False, False, True]
    assert np.isneginf(filter_top_p(logits, 0.1)).tolist() == [False, True, True, True]  # at least one token
    assert filter_top_p(logits, 1.0) is logits


def test_sampling_follows_the_distribution_and_the_seed() -> None:
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    opts = GenerationOptions(temperature=1.0)
    rng = np.random.default_rng(0)
    draws = [next_token(logits, opts, rng, np.zeros(0, np.int64)) for _ in range(4000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.03)
    greedy = GenerationOptions(temperature=0.0)
    assert next_token(logits, greedy, rng, np.zeros(0, np.int64)) == 0
    cold = GenerationOptions(temperature=0.05)  # near-greedy
    assert {next_token(logits, cold, rng, np.zeros(0, np.int64)) for _ in range(50)} == {0}
    top1 = GenerationOptions(temperature=5.0, top_k=1)
    assert {next_token(logits, top1, rng, np.zeros(0, np.int64)) for _ in range(50)} == {0}


# -- generation ---------------------------------------------------------------------------------------------------


def test_stream_pieces_join_to_generate_and_decode(gen: Any) -> None:
    prompt = "the film was"
    pieces = list(gen.stream(prompt, max_new_tokens=20, ignore_eos=True))
    tokens = list(gen.tokens(prompt, 20, ignore_eos=True))
    assert len(tokens) == 20 and len(pieces) >= 1
    assert "".join(pieces) == gen.generate(prompt, max_new_tokens=20, ignore_eos=True)
    # streaming decodes with a few prompt tokens in front (leading spaces survive); the text is the same
    full = gen.decode(gen.encode(prompt) + tokens)
    assert full == gen.decode(gen.encode(prompt)) + "".join(pieces)


def test_seed_makes_sampling_reproducible(gen: Any) -> None:
    a = list(gen.tokens("a great film", 24, temperature=1.2, top_k=50, top_p=0.95, seed=11, ignore_eos=True))
    b = list(gen.tokens("a great film", 24, temperature=1.2, top_k=50, top_p=0.95, seed=11, ignore_eos=True))
    c = list(gen.tokens("a great film", 24, temperature=1.2, top_k=50, top_p=0.95, seed=12, ignore_eos=True))
    assert a == b and a != c


def test_repetition_penalty_changes_greedy_output(gen: Any) -> None:
    plain = list(gen.tokens("the the the", 24, ignore_eos=True))
    penalised = list(gen.tokens("the the the", 24, ignore_eos=True, repetition_penalty=5.0))
    assert plain != penalised
    # a strong penalty never repeats a token while unseen ones remain
    assert len(set(penalised)) == len(penalised)


def test_stop_tokens_and_eos(gen: Any) -> None:
    free = list(gen.tokens("the film was", 24, ignore_eos=True))
    stop = free[5]
    cut = list(gen.tokens("the film was", 24, ignore_eos=True, stop_token_ids=[stop]))
    assert cut == free[: free.index(stop)]  # stops before the stop token; never yields it
    assert 2 not in list(gen.tokens("the film was", 64))  # EOS (id 2) ends generation and is not yielded


def test_stop_strings_end_text_and_are_not_returned(gen: Any) -> None:
    text = gen.generate("the film was", max_new_tokens=30, ignore_eos=True)
    assert len(text) > 6
    stop = text[3:6]
    out = gen.generate("the film was", max_new_tokens=30, ignore_eos=True, stop=stop)
    assert out == text[: text.index(stop)]
    streamed = "".join(gen.stream("the film was", max_new_tokens=30, ignore_eos=True, stop=[stop, "\x00never"]))
    assert streamed == out
    # a stop string that never appears changes nothing
    assert gen.generate("the film was", max_new_tokens=30, ignore_eos=True, stop="\x00never") == text


def test_chat_template_matches_transformers(gen: Any, tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what a film 🎬"}]
    ref = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert gen.apply_chat_template(messages) == ref
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert gen.encode(ref, add_special_tokens=False) == list(ids)
    reply = gen.chat(messages, max_new_tokens=12, ignore_eos=True)
    assert reply == gen.generate(list(ids), max_new_tokens=12, ignore_eos=True)
    assert "".join(gen.chat(messages, stream=True, max_new_tokens=12, ignore_eos=True)) == reply


def test_render_chat_helpers() -> None:
    template = "{{ messages | tojson }}{% if x %}{{ raise_exception('no x') }}{% endif %}"
    assert render_chat(template, [{"role": "user", "content": "é"}], x=False) == '[{"role": "user", "content": "é"}]'
    with pytest.raises(GenerationError, match="the chat template refused the messages: no x"):
        render_chat(template, [{"role": "user", "content": "hi"}], x=True)


def test_log_probs_and_perplexity(gen: Any, tiny_llama_dir: Path) -> None:
    import torch

    from edgellm.models import load_causal_lm

    model = load_causal_lm(tiny_llama_dir)
    ids = gen.encode("The plot is thin and the jokes fall flat")
    lp = gen.log_probs(ids)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
    np.testing.assert_allclose(lp, ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy(), atol=1e-4)
    assert gen.perplexity(["The plot is thin and the jokes fall flat"]) == pytest.approx(float(np.exp(-lp.mean())))


def _prompts_with_a_shared_head(gen: Any) -> list[list[int]]:
    head = gen.encode("The plot is thin and the jokes fall flat")[:6]
    tails = [gen.encode(t) for t in ("A gripping film.", "Two hours", "Not bad at all, I would watch it", "x")]
    # the last prompt is shorter than the head, and one prompt repeats: the shared part is cut to what all share
    return [head + t for t in tails] + [head[:4], head + tails[0]]


@pytest.mark.parametrize("name", ["onnx-fp32", "onnx-int8", "openvino-fp32"])
def test_shared_prefix_scoring_equals_one_prompt_at_a_time(lm_artifact: Path, name: str) -> None:
    """The fused graph's shared buffer, the plain graph's growing cache and OpenVINO's stateful cache each cut
    back to the common head after every prompt, and score like fresh sessions."""
    from edgellm.runtime import load

    model = load(lm_artifact, model=name, threads=1)
    prompts = _prompts_with_a_shared_head(model)
    want = [model.next_token_logits(p) for p in prompts]
    got = list(model.next_token_logits_each(prompts))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)
    assert list(model.next_token_logits_each([])) == []


def test_shared_prefix_scoring_without_truncation_scores_each_prompt_whole(gen: Any, monkeypatch: Any) -> None:
    from edgellm.runtime.base import DecodeSession

    class Uncut(DecodeSession):  # a backend's session that cannot truncate (DecodeSession's default)
        def __init__(self, inner: DecodeSession) -> None:
            self.inner = inner

        def feed(self, ids: Any, keep: int = 1) -> np.ndarray:
            return self.inner.feed(ids, keep)

    prompts = _prompts_with_a_shared_head(gen)
    want = [gen.next_token_logits(p) for p in prompts]
    made = type(gen)._session
    monkeypatch.setattr(type(gen), "_session", lambda self, capacity: Uncut(made(self, capacity)))
    got = list(gen.next_token_logits_each(prompts))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="the prompt is empty"):
        list(gen.next_token_logits_each([[1, 2], []]))
    with pytest.raises(GenerationError, match="tokens: give 1 to"):
        list(gen.next_token_logits_each([[1, 2], [5] * (gen.context_length + 1)]))


def test_truncate_refuses_positions_the_cache_does_not_hold(gen: Any, lm_artifact: Path) -> None:
    from edgellm.runtime import load
    from edgellm.runtime.base import ArrayDecodeSession

    plain = load(lm_artifact, model="onnx-int8", threads=1)  # past / present as arrays, through Backend.run
    ids = gen.encode("The plot is thin and the jokes fall flat")
    for session in (gen.backend.decode_session(gen.kv_layout, capacity=32),
                    ArrayDecodeSession(plain.backend, plain.kv_layout)):
        whole = session.feed(ids[:8])
        with pytest.raises(GenerationError, match="cannot truncate a cache of 8 positions to 9"):
            session.truncate(9)
        session.truncate(5)
        assert session.length == 5
        np.testing.assert_allclose(session.feed(ids[5:8])[-1], whole[-1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_token_log_probs_equals_the_full_log_softmax(dtype: Any) -> None:
    logits = (np.random.default_rng(0).standard_normal((7, 50)) * 8).astype(dtype)
    logits[3, 5] = -np.inf  # a masked-out token: log-probability -inf, the row's others unchanged
    targets = [0, 49, 3, 5, 10, 10, 1]
    want = log_softmax(logits.astype(np.float64))[np.arange(7), targets]
    got = token_log_probs(logits, targets)
    assert got.dtype == np.float64 and got[3] == -np.inf
    np.testing.assert_allclose(got, want, rtol=1e-6)


# -- bad inputs: each one tested --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_new_tokens": 0}, r"max_new_tokens must be an int >= 1, not 0"),
        ({"max_new_tokens": -5}, r"max_new_tokens must be an int >= 1, not -5"),
        ({"max_new_tokens": 2.5}, r"max_new_tokens must be an int >= 1, not 2.5"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], not 0.0"),  # the open end
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], not 1.5"),
        ({"top_p": -0.1}, r"top_p must be in \(0, 1\], not -0.1"),
        ({"temperature": -1.0}, r"temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, r"temperature must be a finite number >= 0"),
        ({"top_k": -1}, r"top_k must be an int >= 0"),
        ({"repetition_penalty": 0.0}, r"repetition_penalty must be a finite number > 0"),
        ({"stop": [""]}, r"stop must be a non-empty string or a list of them"),
        ({"stop_token_ids": ["2"]}, r"stop_token_ids must be a list of ints"),
        ({"seed": -3}, r"seed must be an int >= 0 or None"),
        ({"beams": 4}, r"unknown generation option\(s\) \['beams'\]"),
    ],
)
def test_bad_generation_options(gen: Any, options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        gen.generate("the film", **options)
    with pytest.raises(InputError, match=message):
        gen.stream("the film", **options)  # checked when called, not at the first next()


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("", r"the prompt is empty \(no tokens\)"),  # this tokenizer adds no BOS
        (b"bytes", r"prompt must be a str or a list of token ids, not bytes"),
        ([1, 2, 99999], r"token ids \[99999\] are outside the vocabulary \[0, 320\)"),
        (None, r"prompt must be a str or a list of token ids, not NoneType"),
    ],
)
def test_bad_prompts(gen: Any, prompt: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        gen.generate(prompt, max_new_tokens=2)


def test_prompt_longer_than_context_is_left_truncated_with_a_warning(lm_artifact_no_template: Path) -> None:
    from edgellm.runtime import load

    gen = load(lm_artifact_no_template, threads=1)
    assert gen.context_length == 32
    ids = gen.encode("the film was great and the plot was fun but the ending was slow and the music was too long "
                     "and the acting was bad")
    assert len(ids) > 32
    with pytest.warns(PromptTruncatedWarning, match=rf"the prompt has {len(ids)} tokens .* the oldest "
                                                    rf"{len(ids) - 24} prompt tokens were dropped"):
        out = list(gen.tokens(ids, 8, ignore_eos=True))
    assert out == list(gen.tokens(ids[-24:], 8, ignore_eos=True))  # the same as giving the newest 24 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(gen.tokens(ids[-24:], 8))  # fits: no warning
    with pytest.raises(InputError, match=r"max_new_tokens = 32 leaves no room for a prompt in the context of 32"):
        gen.generate("the film", max_new_tokens=32)


def test_generation_stops_at_the_context_end(lm_artifact_no_template: Path) -> None:
    from edgellm.runtime import load

    gen = load(lm_artifact_no_template, threads=1)
    ids = gen.encode("the film was great")
    out = list(gen.tokens(ids, 31 - len(ids) + 1, ignore_eos=True))
    assert len(ids) + len(out) <= 32


def test_chat_without_a_template_is_refused(lm_artifact_no_template: Path) -> None:
    from edgellm.runtime import load

    gen = load(lm_artifact_no_template, threads=1)
    assert gen.chat_template is None
    with pytest.raises(GenerationError, match=r"has no chat template, so chat\(\) cannot format messages"):
        gen.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], r"messages must be a non-empty list"),
        ("hello", r"messages must be a non-empty list"),
        ([{"content": "hi"}], r"message 0 must be a dict with a 'role' string and a 'content'"),
        ([{"role": "user", "content": "hi"}, "x"], r"message 1 must be a dict"),
    ],
)
def test_bad_chat_messages(gen: Any, messages: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        gen.chat(messages)


# -- CLI and torch-free --------------------------------------------------------------------------------------------


def test_cli_generate_streams_text(lm_artifact: Path, gen: Any) -> None:
    from click.testing import CliRunner

    from edgellm.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["generate", str(lm_artifact), "the film was", "--model", "onnx-fp32",
                              "--max-new-tokens", "12", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert res.output == gen.generate("the film was", max_new_tokens=12) + "\n"
    res = runner.invoke(cli, ["generate", str(lm_artifact), "hi", "--top-p", "1.5"])
    assert res.exit_code == 1 and "error (InputError): top_p must be in (0, 1], not 1.5" in res.output
    res = runner.invoke(cli, ["generate", str(lm_artifact), "hi", "--chat", "--system", "be brief", "--model",
                              "onnx-fp32", "--max-new-tokens", "5", "--threads", "1"])
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert res.exit_code == 0 and res.output == gen.chat(msgs, max_new_tokens=5) + "\n"


def test_cli_generate_refuses_other_tasks(classifier_artifact: Path) -> None:
    from click.testing import CliRunner

    from edgellm.cli import cli

    res = CliRunner().invoke(cli, ["generate", str(classifier_artifact), "hi"])
    assert res.exit_code != 0 and "use `edgellm run`" in res.output


TORCH_FREE = r"""
import sys, json
class Block:
    BLOCKED = ("torch", "transformers", "optimum", "nncf", "neural_compressor", "accelerate")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
import edgellm
gen = edgellm.load(sys.argv[1], threads=1)
ov = edgellm.load(sys.argv[1], model="openvino-fp32", threads=1)
out = {
    "default": gen.describe()["model"],
    "tokens": list(gen.tokens("the film was", 8, ignore_eos=True)),
    "ov_fp32": list(ov.tokens("the film was", 8, ignore_eos=True)),
    "chat": gen.chat([{"role": "user", "content": "hi"}], max_new_tokens=4),
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in Block.BLOCKED),
}
print(json.dumps(out))
"""


def test_generator_runs_with_torch_blocked(lm_artifact: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(lm_artifact)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["default"] in ("onnx-int8", "onnx-int4") and len(out["tokens"]) == 8 and len(out["ov_fp32"]) == 8
    assert isinstance(out["chat"], str) and out["loaded"] == []
