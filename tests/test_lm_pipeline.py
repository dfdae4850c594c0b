"""Text generation through the staged pipeline (`edgellm compress` on a causal-LM recipe): every stage cached,
resumable and recorded; prune and --target honoured; fields that do not apply refused; the teacher corpus
deterministic; in-domain, out-of-domain and task numbers measured apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgellm.data import SAMPLE_TEXTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OTHER_DOMAIN = [f"in the year {1900 + i} the council met in the stone hall to settle the question of taxes"
                for i in range(60)]
LETTERS = [f"dear friend, the rain kept us indoors for {i + 2} days and the river rose over the old mill road"
           for i in range(60)]


@pytest.fixture(scope="module")
def lm_texts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    words = "the film plot was good bad fun slow and but a great boring story".split()
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(5 + i % 9)) for i in range(300)]
    folder = tmp_path_factory.mktemp("lm-texts")
    train = folder / "texts.txt"
    train.write_text("\n".join(lines + [t for t in SAMPLE_TEXTS if t.strip()]), encoding="utf-8")
    ood = folder / "history.txt"
    ood.write_text("\n".join(OTHER_DOMAIN), encoding="utf-8")
    letters = folder / "letters.txt"
    letters.write_text("\n".join(LETTERS), encoding="utf-8")
    return {"train": train, "ood": ood, "letters": letters}


def _recipe(teacher: Path, texts: dict[str, Path], **changes: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "teacher": str(teacher),
        "task": "text-generation",
        "data": {"path": str(texts["train"]), "split": {"validation": 0.1, "test": 0.1}, "max_length": 32},
        "finetune": None,
        "distill": {"num_layers": 3, "epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "temperature": 1.0,
                    "eval_every": 1000, "precision": "fp32"},
        "quantize": {"mode": "weight-only", "backends": ["onnxruntime"]},
        "export": {"formats": ["onnx"]},
        "evaluate": {"threads": 1, "latency_length": 16},
        "causal_lm": {"corpora": [], "out_of_domain": [str(texts["ood"]), str(texts["letters"])],
                      "eval_rows": 20, "eval_texts": 20,
                      "agreement_texts": 4, "sentiment_examples": 0, "decode_tokens": 4, "decode_repeat": 1,
                      "layer_selection": "uniform", "context_length": 64, "weight_bits": [8],
                      "block_size": 16},
    }
    for dotted, value in changes.items():
        node = recipe
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return recipe


def _compress(recipe: dict[str, Any], out: Path, **kwargs: Any) -> Any:
    from edgellm.pipeline import compress
    from edgellm.recipe import recipe_from_dict

    return compress(recipe_from_dict(recipe), out, progress=False, **kwargs)


@pytest.mark.slow
def test_lm_recipe_runs_every_stage_through_the_cache(tiny_llama_factory: Any, lm_texts: dict[str, Path],
                                                      tmp_path: Path) -> None:
    from edgellm.artifact import verify_artifact
    from edgellm.runtime import load

    teacher = tiny_llama_factory(layers=6)
    recipe = _recipe(teacher, lm_texts, prune={"ffn": 0.5, "importance": "magnitude", "recovery_epochs": 0})
    result = _compress(recipe, tmp_path / "art", targets=["cpu-x86-avx2"])
    assert list(result.stages) == ["teacher", "baseline", "distill", "prune", "export", "quantize", "evaluate"]
    manifest = result.manifest
    verify_artifact(tmp_path / "art")
    # prune honoured: the FFN of the 3-layer student is half the teacher's, in torch and in the exported model
    pruned = result.stages["prune"].metrics
    distilled = result.stages["distill"].metrics
    assert pruned["layers"] == distilled["layers"] == 3
    assert pruned["parameters"] < distilled["parameters"] < result.stages["teacher"].metrics["parameters"]
    assert manifest.source["parameters"] == pruned["parameters"]
    # --target built the profile's model (8-bit weights, as its quantization asks)
    target = manifest.model("cpu-x86-avx2")
    assert target.target == "cpu-x86-avx2" and target.precision == "int8" and target.backend == "onnxruntime"
    assert [m.name for m in manifest.models] == ["onnx-fp32", "onnx-int8", "cpu-x86-avx2"]
    # every model and the teacher's runtime models measured alike, in-domain and out-of-domain apart
    evaluated = result.stages["evaluate"].metrics["models"]
    assert set(evaluated) == {"teacher onnx-fp32", "teacher onnx-int8", "onnx-fp32", "onnx-int8", "cpu-x86-avx2"}
    sources = [str(lm_texts["ood"]), str(lm_texts["letters"])]
    for name, m in evaluated.items():
        assert m["perplexity_in_domain"] > 1 and m["perplexity_out_of_domain"] > 1, name
        assert m["generation"]["new_tokens"] == 4
        # each out-of-domain source scored on its own (10 of the 20 passages each) and pooled over their tokens
        by_source = m["perplexity_out_of_domain_by_source"]
        assert list(by_source) == sources, name
        assert min(by_source.values()) <= m["perplexity_out_of_domain"] <= max(by_source.values()), name
    assert result.stages["evaluate"].metrics["texts"]["out_of_domain_by_source"] == {s: 10 for s in sources}
    assert manifest.model("onnx-int8").metrics["test"]["perplexity_out_of_domain_by_source"] == \
        evaluated["onnx-int8"]["perplexity_out_of_domain_by_source"]
    assert evaluated["teacher onnx-fp32"]["kl_from_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert evaluated["teacher onnx-fp32"]["top1_agreement"] == 1.0
    assert evaluated["onnx-fp32"]["kl_from_teacher"] > 0
    # the exported FP32 student scores the test split like torch did (same rows, same tokens)
    assert evaluated["onnx-fp32"]["perplexity_in_domain"] == pytest.approx(pruned["perplexity_in_domain"], rel=1e-3)
    assert evaluated["onnx-fp32"]["perplexity_out_of_domain"] == pytest.approx(pruned["perplexity_out_of_domain"],
                                                                               rel=1e-3)
    for source, ppl in pruned["perplexity_out_of_domain_by_source"].items():
        assert evaluated["onnx-fp32"]["perplexity_out_of_domain_by_source"][source] == pytest.approx(ppl, rel=1e-3)
    from edgellm.pipeline import stage_headline

    assert "history.txt" in stage_headline(pruned) and "letters.txt" in stage_headline(pruned)
    assert manifest.metrics["evaluate"]["default_model"]["name"] == manifest.default_model
    assert "validation perplexity" in manifest.metrics["evaluate"]["default_model"]["reason"]
    assert "perplexity out-of-domain" in result.summary_markdown
    assert len(list(load(tmp_path / "art", threads=1).tokens("the film", 3, ignore_eos=True))) == 3

    # a rerun reuses every finished stage and publishes the same bytes
    before = {k: v["sha256"] for k, v in manifest.files.items()}
    again = _compress(recipe, tmp_path / "art", targets=["cpu-x86-avx2"], overwrite=True)
    assert all(r.cached for r in again.stages.values())
    assert {k: v["sha256"] for k, v in again.manifest.files.items()} == before

    # the teacher's runtime models are scored once (baseline): a new student re-scores only its own models
    baseline = result.stages["baseline"].metrics["models"]
    assert set(baseline) == {"teacher onnx-fp32", "teacher onnx-int8"}
    for name, record in baseline.items():
        assert {k: v for k, v in evaluated[name].items() if k != "generation"} == record
        assert set(record["seconds"]) == {"perplexity", "agreement", "generation"}
        assert min(record["seconds"].values()) >= 0
    changed = _compress({**recipe, "distill": {**recipe["distill"], "learning_rate": 5e-4}}, tmp_path / "art2",
                        targets=["cpu-x86-avx2"], work_dir=again.work_dir)
    assert [n for n, r in changed.stages.items() if r.cached] == ["teacher", "baseline"]
    assert changed.stages["evaluate"].metrics["models"]["teacher onnx-int8"]["perplexity_out_of_domain"] == \
        baseline["teacher onnx-int8"]["perplexity_out_of_domain"]

    # the teacher's 8-bit model follows the recipe's 8-bit weight settings: changing one makes it (and all after) again
    import onnx

    from edgellm.artifact import read_manifest

    rebuilt = _compress({**recipe, "prune": None, "quantize": None,
                         "causal_lm": {**recipe["causal_lm"], "block_size_8bit_by_name": {"down_proj": 16}}},
                        tmp_path / "art3", work_dir=again.work_dir)
    assert not any(r.cached for r in rebuilt.stages.values())
    runtime = rebuilt.stages["teacher"].folder / "runtime"
    graph = onnx.load(str(runtime / read_manifest(runtime).model("onnx-int8").path), load_external_data=False).graph
    blocks = {n.name: dict((a.name, a.i) for a in n.attribute)["block_size"] for n in graph.node
              if n.op_type == "MatMulNBits"}
    assert {b for n, b in blocks.items() if n.endswith("down_proj")} == {16} and blocks["lm_head"] == 64


def test_auto_int4_fallback_is_chosen_on_validation_text_and_recorded(tiny_llama_dir: Path, lm_texts: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """int4_fallback: auto judges each 4-bit candidate on the validation rows the evaluate stage scores, against the
    artifact's own FP32 model; the search goes into the manifest and the summary, and its budget into the quantize
    stage's key (a new budget quantizes again, reusing what came before)."""
    recipe = _recipe(tiny_llama_dir, lm_texts, distill=None, **{
        "causal_lm.weight_bits": [8, 4], "causal_lm.int4_fallback": "auto", "causal_lm.int4_method": "rtn",
        "causal_lm.sentiment_examples": 10, "evaluate.latency": False})
    result = _compress(recipe, tmp_path / "art")
    assert list(result.stages) == ["teacher", "baseline", "export", "quantize", "evaluate"]
    q4 = result.manifest.model("onnx-int4").quantization
    search = q4["fallback_search"]
    evaluated = result.stages["evaluate"].metrics["models"]
    validation = result.stages["evaluate"].metrics["texts"]["validation"]
    # no movie reviews in this recipe's text: perplexity alone judges
    assert search["budget"] == {"perplexity_ratio": 1.05, "rows": {"validation_texts": validation,
                                                                   "sentiment_reviews": 0}}
    assert search["fp32"]["perplexity"] == pytest.approx(evaluated["onnx-fp32"]["perplexity_validation"], rel=1e-4)
    kept = search["trials"][-1]
    assert kept["step"] == search["chosen"] and kept["fallback_fraction"] == q4["fallback_fraction"]
    assert kept["keep_8bit"] == q4["keep_8bit"]
    assert kept["perplexity"] == pytest.approx(evaluated["onnx-int4"]["perplexity_validation"], rel=1e-4)
    assert search["within_budget"] == (kept["perplexity_ratio"] <= 1.05) == (not kept["misses"])
    assert all(t["misses"] for t in search["trials"][:-1])
    assert f"onnx-int4 (8-bit: {search['chosen']}; auto)" in result.summary_markdown
    tighter = _compress({**recipe, "causal_lm": {**recipe["causal_lm"], "int4_tolerance": 0.0}}, tmp_path / "art2",
                        work_dir=result.work_dir)
    assert [n for n, r in tighter.stages.items() if r.cached] == ["teacher", "baseline", "export"]
    assert tighter.manifest.model("onnx-int4").quantization["fallback_search"]["budget"]["perplexity_ratio"] == 1.0


def test_fields_that_do_not_apply_are_refused(tiny_llama_dir: Path, lm_texts: dict[str, Path]) -> None:
    from edgellm.errors import ConfigError
    from edgellm.recipe import recipe_from_dict

    base = _recipe(tiny_llama_dir, lm_texts)
    assert recipe_from_dict(base).finetune is None
    for dotted, value in [("finetune", {"epochs": 1}), ("export.trim_vocab", True), ("export.max_length", 64),
                          ("quantize.tolerance", 0.5), ("distill.alpha_hidden", 1.0), ("evaluate.repeat", 5),
                          ("data.label_column", "y")]:
        with pytest.raises(ConfigError, match=f"{dotted.replace('.', '[.]')} does not apply to text-generation"):
            recipe_from_dict(_recipe(tiny_llama_dir, lm_texts, **{dotted: value}))
    for lm, message in [({"block_size_8bit_by_name": {"down_proj": 24}}, "block_size_8bit_by_name.down_proj = 24"),
                        ({"block_size_8bit": 100}, "block_size_8bit = 100")]:
        with pytest.raises(ConfigError, match=f"causal_lm.{message}: a power of two >= 16"):
            recipe_from_dict({**base, "causal_lm": {**base["causal_lm"], **lm}})
    with pytest.raises(ConfigError, match="causal_lm applies to task text-generation only"):
        recipe_from_dict({"teacher": "x", "task": "text-classification", "data": {"name": "movie-reviews"},
                          "causal_lm": {"corpora": []}})


def test_out_of_domain_text_must_not_touch_training(lm_texts: dict[str, Path]) -> None:
    from edgellm.errors import DataError
    from edgellm.pipeline_lm import load_out_of_domain

    ood, letters = str(lm_texts["ood"]), str(lm_texts["letters"])
    assert load_out_of_domain([ood, letters], ["a film"]) == {ood: OTHER_DOMAIN, letters: LETTERS}
    with pytest.raises(DataError, match="letters.txt' shares 1 texts with the training text"):
        load_out_of_domain([ood, letters], [LETTERS[3]])


def test_out_of_domain_sources_are_scored_apart_and_pooled_over_their_tokens(tiny_llama_factory: Any) -> None:
    from edgellm.errors import ConfigError, DataError
    from edgellm.models import load_tokenizer
    from edgellm.pipeline_lm import measure_lm, ood_passages
    from edgellm.recipe import CausalLMConfig

    tok = load_tokenizer(tiny_llama_factory(layers=1))
    parts = ood_passages(tok, {"history": OTHER_DOMAIN, "letters": LETTERS}, length=16, count=5)
    assert [len(p) for p in parts.values()] == [3, 2]  # the count split evenly, the first source takes the rest
    assert all(len(p) == 16 for ps in parts.values() for p in ps)
    with pytest.raises(DataError, match=r"\['short'\]: too little text for one 16-token passage"):
        ood_passages(tok, {"history": OTHER_DOMAIN, "short": ["a b"]}, length=16, count=4)

    class Scorer:  # log-probability -(token id % 7) / 10 for every predicted token
        def log_probs(self, ids: list[int]) -> list[float]:
            return [-(i % 7) / 10 for i in ids[1:]]

    sets = {"validation": parts["letters"], **{f"out_of_domain:{k}": v for k, v in parts.items()}}
    m = measure_lm(Scorer(), sets)
    together = measure_lm(Scorer(), {"all": [p for ps in parts.values() for p in ps]})
    assert m["perplexity_out_of_domain"] == pytest.approx(together["perplexity_all"], rel=1e-12)
    assert m["perplexity_out_of_domain_by_source"] == {
        k: pytest.approx(measure_lm(Scorer(), {"x": v})["perplexity_x"], rel=1e-12) for k, v in parts.items()}
    assert m["perplexity_validation"] == m["perplexity_out_of_domain_by_source"]["letters"]
    assert m["perplexity_out_of_domain_by_source"]["history"] != m["perplexity_out_of_domain_by_source"]["letters"]

    for bad, match in [({"out_of_domain": []}, "list one or more sources"),
                       ({"out_of_domain": ["a", "a"]}, "each once"),
                       ({"out_of_domain": ["a", "b", "c"], "eval_texts": 2}, "split among 3 out-of-domain sources")]:
        with pytest.raises(ConfigError, match=match):
            CausalLMConfig(**bad).validate("causal_lm")


def test_sentiment_rows_are_labelled_reviews_of_the_held_out_test_split() -> None:
    from edgellm.data import VADER_THRESHOLD, _vader_rows
    from edgellm.pipeline_lm import SENTIMENT_LABELS, _sentiment_rows
    from edgellm.recipe import DataConfig, SplitConfig
    from edgellm.train.causal import load_lm_data

    data = load_lm_data(DataConfig(split=SplitConfig(validation=0.05, test=0.05, seed=13)),
                        corpora=["movie-reviews", "tweets"])
    texts, labels = _sentiment_rows(data, 150)
    assert len(texts) == 150 and len(labels) == 150 and _sentiment_rows(data, 0) == ([], [])
    test, train = set(data.test.texts), set(data.train.texts)
    assert all(t in test and t not in train for t in texts)  # held out of the LM's training
    score = {text: s for _, s, text in _vader_rows("movie-reviews")}
    assert all(abs(score[t]) > VADER_THRESHOLD for t in texts)  # neutral reviews have no label; tweets are not reviews
    assert [SENTIMENT_LABELS[y] for y in labels] == ["positive" if score[t] > 0 else "negative" for t in texts]
    assert texts == [t for t in data.test.texts if t in set(texts)]  # in the split's order
    assert sorted(labels) == [0] * 75 + [1] * 75  # half of each label (the split's first 150 are nearly all positive)
    everything = _sentiment_rows(data, 10_000)
    assert texts == [t for t in everything[0] if t in set(texts)] and 0 < sum(everything[1]) < len(everything[1])
    # int4_fallback: auto chooses on the validation split's reviews, never the test split's
    chosen_on, chosen_labels = _sentiment_rows(data, 150, split="validation")
    validation = set(data.validation.texts)
    assert len(chosen_on) == 150 and all(t in validation and t not in test for t in chosen_on)
    assert sorted(chosen_labels) == [0] * 75 + [1] * 75


def test_balanced_rows_split_evenly_as_far_as_the_rows_allow() -> None:
    from edgellm.pipeline_lm import balanced_rows

    rows = [(f"p{i}", 1) for i in range(6)] + [("n0", 0), ("n1", 0)] + [(f"p{i}", 1) for i in range(6, 9)]
    assert balanced_rows(rows, 4) == [("p0", 1), ("p1", 1), ("n0", 0), ("n1", 0)]
    assert balanced_rows(rows, 6) == [*rows[:4], ("n0", 0), ("n1", 0)]  # 2 negatives only: the positives fill up
    assert balanced_rows(rows, 5) == [*rows[:3], ("n0", 0), ("n1", 0)]
    assert balanced_rows(rows, 100) == rows and balanced_rows(rows, 0) == [] and balanced_rows([], 3) == []


def test_decoder_targets_refused_before_any_work() -> None:
    from edgellm.errors import ConfigError
    from edgellm.pipeline_lm import check_lm_targets

    assert [p.name for p in check_lm_targets(["cpu-x86-avx512", "intel-gpu"])] == ["cpu-x86-avx512", "intel-gpu"]
    with pytest.raises(ConfigError, match="intel-npu: static_shape"):
        check_lm_targets(["intel-npu"])


def test_teacher_corpus_is_deterministic_for_a_seed(lm_artifact: Path) -> None:
    from edgellm.runtime import load
    from edgellm.train.corpus import generate_corpus, teacher_prompts

    prompts = teacher_prompts(4, seed=3)
    assert prompts == teacher_prompts(4, seed=3) and prompts != teacher_prompts(4, seed=4)
    assert len(set(teacher_prompts(200, seed=0))) == 200  # distinct while forms x topics last
    gen = load(lm_artifact, model="onnx-fp32", threads=1)
    first = generate_corpus(gen, prompts, max_new_tokens=8, seed=5)
    assert first == generate_corpus(gen, prompts, max_new_tokens=8, seed=5)
    assert first != generate_corpus(gen, prompts, max_new_tokens=8, seed=6)
    assert all(0 < r["tokens"] <= 8 and r["text"] for r in first)


def test_corpus_texts_are_the_conversation_or_the_reply(tmp_path: Path) -> None:
    from tests.conftest import save_tiny_bpe_tokenizer

    from edgellm.train.causal import encode_lm
    from edgellm.train.corpus import corpus_texts, read_corpus

    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"prompt": "Tell a story.", "text": "the film was good", "tokens": 5}) + "\n"
                    + json.dumps({"prompt": "Say nothing.", "text": "", "tokens": 0}) + "\n", encoding="utf-8")
    rows = read_corpus(path)
    assert [r["text"] for r in rows] == ["the film was good"]  # a row without text is dropped
    tok = save_tiny_bpe_tokenizer(tmp_path / "tok")
    chat = corpus_texts(rows, tok, chat=True)
    assert chat == ["<|im_start|>user\nTell a story.<|im_end|>\n<|im_start|>assistant\nthe film was good<|im_end|>\n"]
    ids = encode_lm(tok, chat, None)[0]
    assert ids[0] == 1 and ids.count(2) == 2  # the turns' markers are the special tokens, not their letters
    assert corpus_texts(rows, tok, chat=False) == ["the film was good"]
    tok.chat_template = None  # a teacher without a chat template: the reply alone
    assert corpus_texts(rows, tok, chat=True) == ["the film was good"]
    from edgellm.errors import DataError

    path.write_text(path.read_text(encoding="utf-8") + '{"prompt": "cut off', encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus\.jsonl, line 3: not JSON"):
        read_corpus(path)
    path.write_text('{"text": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: not a corpus row"):
        read_corpus(path)


def test_zero_shot_sentiment_and_agreement_measure_what_they_say(lm_artifact: Path) -> None:
    import numpy as np

    from edgellm.evaluate import lm_agreement, zero_shot_sentiment
    from edgellm.runtime import load

    gen = load(lm_artifact, model="onnx-fp32", threads=1)
    same = lm_agreement(gen, gen, [gen.encode("the film was good"), gen.encode("a slow story")])
    assert same["kl"] == pytest.approx(0.0, abs=1e-9) and same["top1_agreement"] == 1.0

    class Shifted:  # the same model with one token's logit raised everywhere: KL > 0, top-1 changes
        def logits(self, ids: Any) -> np.ndarray:
            out = gen.logits(ids).copy()
            out[:, 5] += 50.0
            return out

    moved = lm_agreement(gen, Shifted(), [gen.encode("the film was good")])
    assert moved["kl"] > 1.0 and moved["top1_agreement"] < 0.5

    texts, labels = ["good fun", "bad slow", "great story", "boring plot"], [1, 0, 1, 0]
    result = zero_shot_sentiment(gen, texts, labels, ["negative", "positive"])
    assert result["examples"] == 4 and 0 <= result["accuracy"] <= 100
    # the prediction is the label whose first token is likelier after the prompt: checked against a direct reading
    from edgellm.evaluate import SENTIMENT_PROMPT, log_softmax

    ids = gen.encode(gen.apply_chat_template([{"role": "user", "content": SENTIMENT_PROMPT.format(text=texts[0])}]),
                     add_special_tokens=False)
    logp = log_softmax(gen.next_token_logits(ids))
    assert np.isfinite(logp).all()


def test_interrupted_distill_resumes(tiny_llama_factory: Any, lm_texts: dict[str, Path], tmp_path: Path) -> None:
    """A kill in the middle of the distill stage: the rerun reuses the teacher stage and resumes distillation."""
    import os
    import subprocess
    import sys

    teacher = tiny_llama_factory(layers=6)
    recipe = _recipe(teacher, lm_texts, **{"distill.eval_every": 1, "quantize": None, "evaluate.latency": False})
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    code = ("import json,sys; from edgellm.pipeline import compress; from edgellm.recipe import recipe_from_dict;"
            f"compress(recipe_from_dict(json.load(open({str(path)!r}))), {str(tmp_path / 'art')!r}, progress=False)")
    env = {**os.environ, "EDGELLM_FAULT": "distill:checkpoint"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and not (tmp_path / "art").exists()
    work = tmp_path / "art.work"
    assert any((d / "stage.json").is_file() for d in work.glob("teacher-*"))
    assert not any((d / "stage.json").is_file() for d in work.glob("distill-*"))
    result = _compress(recipe, tmp_path / "art")
    assert result.stages["teacher"].cached and not result.stages["distill"].cached
    training = result.stages["distill"].metrics["training"]
    assert training["resumed_from"] == 1 and training["steps"] > 1


def test_batched_decoding_gives_each_row_what_it_gets_alone(lm_artifact: Path) -> None:
    """Rows of different prompt lengths in one shared KV buffer: greedy tokens identical to decoding each prompt
    alone, sampled tokens identical for the same per-row seed, and each row stops on its own."""
    import numpy as np

    from edgellm.runtime import load

    gen = load(lm_artifact, model="onnx-fp32", threads=1)
    assert gen.manifest.model("onnx-fp32").kv_cache["shared_buffer"]
    prompts = [gen.encode(t) for t in ("the film", "a slow and boring story about a great plot", "fun")]
    alone = [list(gen.tokens(p, 12, ignore_eos=True)) for p in prompts]
    assert gen.tokens_batch(prompts, 12, ignore_eos=True) == alone
    sampled = gen.tokens_batch(prompts, 12, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True)
    assert sampled == [list(gen.tokens(p, 12, temperature=0.9, top_p=0.9, seed=11 + i, ignore_eos=True))
                       for i, p in enumerate(prompts)]
    # the prompt step's logits for each row equal that row's own
    session = gen.backend.batch_decode_session(gen.kv_layout, batch=3, capacity=64)
    batched = session.feed(prompts)
    for row, p in zip(batched, prompts):
        np.testing.assert_allclose(row, gen.next_token_logits(p), atol=1e-4)
    # a row that meets a stop token ends there while the others go on
    stop = alone[1][3]
    stopped = gen.tokens_batch(prompts, 12, stop_token_ids=[stop], ignore_eos=True)
    for got, full in zip(stopped, alone):
        assert got == (full[: full.index(stop)] if stop in full else full)


def test_batched_decoding_falls_back_row_by_row_where_there_is_no_batched_graph(lm_artifact: Path) -> None:
    from edgellm.runtime import load

    gen = load(lm_artifact, model="openvino-fp32", threads=1)  # stateful OpenVINO: no batched session
    prompts = [gen.encode("the film"), gen.encode("fun")]
    assert gen.tokens_batch(prompts, 5, ignore_eos=True) == [list(gen.tokens(p, 5, ignore_eos=True)) for p in prompts]


def test_an_openvino_decoder_target_runs_in_its_profiles_precision(lm_artifact: Path, tiny_llama_dir: Path,
                                                                    tmp_path: Path) -> None:
    """cpu-x86-amx: the target decoder gets INT8 weights and keeps the profile's bf16 compute (not the INT8
    preset's f32); the runtime compiles it so, and it generates."""
    import shutil

    from edgellm.artifact import read_manifest, write_manifest
    from edgellm.data import SAMPLE_TEXTS
    from edgellm.exporting.decoder import check_prompts, torch_references
    from edgellm.models import load_causal_lm, load_tokenizer
    from edgellm.pipeline_lm import _target_entry, check_lm_targets
    from edgellm.quantize.decoder import WeightFormats, quantize_target_decoder
    from edgellm.runtime import load

    art = tmp_path / "lm"
    shutil.copytree(lm_artifact, art)
    manifest = read_manifest(art)
    [profile] = check_lm_targets(["cpu-x86-amx"])
    entry = _target_entry(art, manifest, profile)
    manifest.models.append(entry)
    references = torch_references(load_causal_lm(tiny_llama_dir),
                                  check_prompts(load_tokenizer(tiny_llama_dir), SAMPLE_TEXTS[:2]),
                                  context_length=manifest.max_length)
    entry = quantize_target_decoder(art, manifest, entry, references, weights=WeightFormats())
    assert (entry.backend, entry.precision, entry.inference_precision) == ("openvino", "int8", "bf16")
    write_manifest(art, manifest)
    gen = load(art, model="cpu-x86-amx", threads=1, verify=False)
    assert gen.backend._config["INFERENCE_PRECISION_HINT"] == "bf16"
    assert len(list(gen.tokens("the film", 3, ignore_eos=True))) == 3


def test_decode_share_is_the_students_share_of_the_teachers_multiply_adds(tiny_llama_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from transformers import AutoConfig

    from edgellm.pipeline_lm import decode_share

    config = json.loads((tiny_llama_dir / "config.json").read_text())
    loaded = AutoConfig.from_pretrained(tiny_llama_dir)

    def linear_weights(layers: int, ffn: int) -> int:  # every matmul of a token's forward pass, the LM head once
        model = LlamaForCausalLM(LlamaConfig(**{**config, "num_hidden_layers": layers, "intermediate_size": ffn}))
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))

    teacher = linear_weights(config["num_hidden_layers"], config["intermediate_size"])
    for layers, ffn in [(config["num_hidden_layers"], None), (3, None), (2, 32)]:
        want = linear_weights(layers, ffn or config["intermediate_size"]) / teacher
        assert decode_share(loaded, layers, ffn) == pytest.approx(want, rel=1e-9)


def _time_stages(tmp_path: Path, config: dict[str, Any], *, timed: bool = True) -> dict[str, Any]:
    from edgellm.pipeline import StageRecord

    (tmp_path / "teacher" / "model").mkdir(parents=True)
    (tmp_path / "teacher" / "model" / "config.json").write_text(json.dumps(config))
    seconds = {"export": 10.0, "scoring": 20.0} if timed else {}
    fp32 = {"perplexity": 30.0, "agreement": 8.0, "sentiment": 12.0, "generation": 2.0}
    int8 = {"perplexity": 20.0, "agreement": 6.0, "sentiment": 6.0, "generation": 1.0}
    return {"teacher": StageRecord("teacher", "t", tmp_path / "teacher", {"phase_seconds": seconds}, cached=True,
                                   seconds=100.0),
            "baseline": StageRecord("baseline", "b", tmp_path / "baseline",
                                    {"models": {"teacher onnx-fp32": {"seconds": fp32},
                                                "teacher onnx-int8": {"seconds": int8}}}, cached=False, seconds=50.0),
            "corpus": StageRecord("corpus", "c", tmp_path / "corpus", {}, cached=True, seconds=200.0)}


def test_recipe_minutes_trains_for_what_the_other_stages_leave(tiny_llama_dir: Path, lm_texts: dict[str, Path],
                                                               tmp_path: Path) -> None:
    from edgellm.errors import ConfigError
    from edgellm.pipeline_lm import DISTILL_FACTOR, EXPORT_FACTOR, decode_share, plan_recipe_time
    from edgellm.recipe import recipe_from_dict

    from transformers import AutoConfig

    config = json.loads((tiny_llama_dir / "config.json").read_text())
    stages = _time_stages(tmp_path, config)
    recipe = recipe_from_dict(_recipe(tiny_llama_dir, lm_texts, **{"causal_lm.recipe_minutes": 30,
                                                                   "causal_lm.decode_repeat": 3}))
    plan = plan_recipe_time(recipe, recipe.causal_lm, stages, [])  # type: ignore[arg-type]
    s = decode_share(AutoConfig.from_pretrained(tiny_llama_dir), 3)
    assert plan["student_share"] == pytest.approx(s, abs=1e-4)
    assert plan["before_s"] == {"teacher": 100.0, "baseline": 50.0, "corpus": 200.0}  # as recorded, cached or not
    # the recipe makes onnx-fp32 and onnx-int8 (weight_bits [8]): each scored like the teacher's model of its kind,
    # its own passes scaled, the FP32 teacher's KL passes not; 1 + 3 generations of each and of the teacher's two
    evaluate = (30 + 12 + 4) * s + 4 + (20 + 6 + 3) * s + 3 + 4 * (2 + 1 + 2 * s + 1 * s)
    assert plan["predicted_s"] == pytest.approx({"distill_besides_training": DISTILL_FACTOR * 20,
                                                 "export_quantize": EXPORT_FACTOR * 10 * s, "evaluate": evaluate},
                                                abs=0.1)
    assert plan["train_minutes"] == pytest.approx((30 * 60 - 350 - sum(plan["predicted_s"].values())) / 60, abs=0.02)
    with pytest.raises(ConfigError, match="recipe_minutes = 5 leaves -[0-9.]+ minutes to train .at least 1.: "
                                          "the stages before took 5.8.*raise"):
        short = recipe_from_dict(_recipe(tiny_llama_dir, lm_texts, **{"causal_lm.recipe_minutes": 5}))
        plan_recipe_time(short, short.causal_lm, stages, [])  # type: ignore[arg-type]
    untimed = _time_stages(tmp_path / "old", config, timed=False)
    with pytest.raises(ConfigError, match="recorded without the seconds its export and scoring took"):
        plan_recipe_time(recipe, recipe.causal_lm, untimed, [])  # type: ignore[arg-type]


def test_recipe_minutes_is_refused_where_it_cannot_plan(tiny_llama_dir: Path, lm_texts: dict[str, Path],
                                                        tmp_path: Path) -> None:
    from edgellm.errors import ConfigError
    from edgellm.recipe import recipe_from_dict

    with pytest.raises(ConfigError, match="budget_minutes = 5.0 and recipe_minutes = 30.0 both bound distillation"):
        recipe_from_dict(_recipe(tiny_llama_dir, lm_texts, **{"causal_lm.recipe_minutes": 30,
                                                              "causal_lm.budget_minutes": 5}))
    for changes, why in [({"prune": {"ffn": 0.5}}, "a prune stage's recovery training is not predicted"),
                         ({"distill": None}, "the recipe has no distill stage")]:
        recipe = _recipe(tiny_llama_dir, lm_texts, **{"causal_lm.recipe_minutes": 30})
        with pytest.raises(ConfigError, match=f"recipe_minutes = 30.*{why}: use causal_lm.budget_minutes"):
            _compress({**recipe, **changes}, tmp_path / "art")
        assert not (tmp_path / "art").exists()


@pytest.mark.slow
def test_a_recipe_minutes_run_records_its_plan(tiny_llama_factory: Any, lm_texts: dict[str, Path],
                                               tmp_path: Path) -> None:
    from edgellm.pipeline_lm import _planned_precisions, check_lm_targets
    from edgellm.recipe import recipe_from_dict

    recipe = _recipe(tiny_llama_factory(layers=6), lm_texts, **{"causal_lm.recipe_minutes": 10})
    result = _compress(recipe, tmp_path / "art", targets=["cpu-x86-avx2"])
    assert set(result.stages["teacher"].metrics["phase_seconds"]) == {"export", "scoring"}
    teachers = result.stages["baseline"].metrics["models"]
    assert all(m["seconds"]["generation"] > 0 for m in teachers.values())
    plan = result.stages["distill"].metrics["recipe_time"]
    assert 1 < plan["train_minutes"] < 10 and set(plan["before_s"]) == {"teacher", "baseline"}
    assert result.stages["distill"].metrics["training"]["budget"]["budget_minutes"] == plan["train_minutes"]
    # the prediction counts the models the stages wrote, each of its kind
    parsed = recipe_from_dict(recipe)
    profiles = check_lm_targets(["cpu-x86-avx2"])
    planned = _planned_precisions(parsed, parsed.causal_lm, profiles)  # type: ignore[arg-type]
    assert sorted(planned) == sorted("fp32" if m.precision == "fp32" else "int8" for m in result.manifest.models)
    # the benchmark's report sets the plan beside what the stages took
    from bench.lm_student import markdown, report

    reported = report(tmp_path / "art", "recipe.yaml")["time_plan"]
    stage_s = {name: r.seconds for name, r in result.stages.items()}
    assert reported["actual_s"]["export_quantize"] == pytest.approx(stage_s["export"] + stage_s["quantize"], abs=0.1)
    assert reported["actual_s"]["evaluate"] == pytest.approx(stage_s["evaluate"], abs=0.1)
    assert 0 < reported["actual_s"]["distill_besides_training"] < stage_s["distill"]
    assert "Time plan (`causal_lm.recipe_minutes: 10`)" in markdown(report(tmp_path / "art", "recipe.yaml"))
