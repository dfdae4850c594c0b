"""Causal-LM student: layer choice, construction, KD loss, perplexity, LM data, and a short distillation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from edgellm.data import SAMPLE_TEXTS


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tiny_llama_factory: Any) -> Any:
    from edgellm.train.causal import load_teacher_lm

    return load_teacher_lm(tiny_llama_factory(layers=6))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = "the film plot was good bad fun slow and but a great boring story".split()
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(5 + i % 9)) for i in range(300)]
    path = tmp_path_factory.mktemp("lm-data") / "texts.txt"
    path.write_text("\n".join(lines + [t for t in SAMPLE_TEXTS if t.strip()]), encoding="utf-8")
    return path


def test_uniform_layers_keep_first_and_last(teacher: Any) -> None:
    from edgellm.train.causal import choose_lm_layers

    model = teacher.model
    assert choose_lm_layers(model, 3, method="uniform") == [0, 2, 5]  # round(2.5) = 2 (banker's rounding)
    assert choose_lm_layers(model, 2, method="uniform") == [0, 5]
    assert choose_lm_layers(model, 6, method="uniform") == [0, 1, 2, 3, 4, 5]
    assert choose_lm_layers(model, 1, method="uniform") == [5]


def test_block_influence_picks_the_layers_that_change_most(teacher: Any) -> None:
    from edgellm.train.causal import block_influence, choose_lm_layers, encode_lm

    seqs = encode_lm(teacher.tokenizer, SAMPLE_TEXTS[:8], 64)
    scores = block_influence(teacher.model, seqs)
    assert len(scores) == 6 and all(0.0 <= s <= 2.0 for s in scores)
    chosen = choose_lm_layers(teacher.model, 4, method="block-influence", sequences=seqs)
    middle = sorted(range(1, 5), key=lambda i: -scores[i])[:2]
    assert chosen == sorted([0, 5, *middle])


@pytest.mark.parametrize(
    "num, method, message",
    [
        (0, "uniform", r"distill.num_layers = 0 is out of range for a teacher with 6 layers"),
        (7, "uniform", r"distill.num_layers = 7 is out of range"),
        (3, "random", r"causal_lm.layer_selection = 'random' is not one of"),
    ],
)
def test_bad_layer_choices(teacher: Any, num: int, method: str, message: str) -> None:
    from edgellm.errors import ConfigError
    from edgellm.train.causal import choose_lm_layers

    with pytest.raises(ConfigError, match=message):
        choose_lm_layers(teacher.model, num, method=method, sequences=[[1, 2, 3]])


def test_student_copies_teacher_layers(teacher: Any) -> None:
    import torch

    from edgellm.models import count_parameters
    from edgellm.train.causal import build_lm_student

    student = build_lm_student(teacher.model, [0, 3, 5])
    cfg = teacher.model.config
    assert student.config.num_hidden_layers == 3
    per_layer = (count_parameters(teacher.model) - count_parameters(student)) / 3
    assert per_layer == sum(p.numel() for p in teacher.model.model.layers[1].parameters())
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight, teacher.model.model.layers[3].mlp.up_proj.weight)
    narrow = build_lm_student(teacher.model, [0, 5], ffn_size=64)
    assert narrow.model.layers[0].mlp.down_proj.weight.shape == (cfg.hidden_size, 64)
    assert narrow.config.intermediate_size == 64


def test_width_by_activation_keeps_the_busiest_neurons(teacher: Any) -> None:
    """Minitron-style width: the neurons with the largest mean |act(gate) * up| on real text are kept, in order."""
    import torch

    from edgellm.train.causal import build_lm_student, ffn_activation_importance

    model = teacher.model
    seqs = [teacher.tokenizer(t).input_ids for t in ["the film was good", "a slow and boring story", "fun"]]
    scores = ffn_activation_importance(model, seqs)
    width = model.config.intermediate_size
    assert sorted(scores) == list(range(model.config.num_hidden_layers))
    assert all(v.shape == (width,) and bool((v >= 0).all()) and float(v.sum()) > 0 for v in scores.values())
    student = build_lm_student(model, [0, 5], ffn_size=width // 2, neuron_scores=scores)
    keep = torch.sort(torch.topk(scores[5], width // 2).indices).values
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight,
                               model.model.layers[5].mlp.up_proj.weight[keep])
    torch.testing.assert_close(student.model.layers[1].mlp.down_proj.weight,
                               model.model.layers[5].mlp.down_proj.weight[:, keep])
    # by hand for one neuron of layer 0: the mean over every token of |silu(gate) * up|
    captured = []
    handle = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        for ids in seqs:
            model(torch.tensor([ids]))
    handle.remove()
    acts = torch.cat([c[0] for c in captured]).abs().double()
    torch.testing.assert_close(scores[0], acts.mean(0), rtol=1e-5, atol=1e-7)


def test_causal_kd_loss_values() -> None:
    import torch
    import torch.nn.functional as F

    from edgellm.train.causal import causal_kd_loss

    torch.manual_seed(0)
    s = torch.randn(2, 5, 11)
    t = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    zero, parts = causal_kd_loss(s, s.clone(), ids, mask, temperature=2.0)
    assert float(zero) == pytest.approx(0.0, abs=1e-6) and set(parts) == {"kd"}
    loss, parts = causal_kd_loss(s, t, ids, mask, temperature=2.0, alpha_kd=0.5, alpha_ce=2.0)
    real = mask.bool()
    kl = F.kl_div(F.log_softmax(s[real] / 2, -1), F.log_softmax(t[real] / 2, -1), log_target=True,
                  reduction="batchmean") * 4
    ce = F.cross_entropy(s[:, :-1][real[:, 1:]], ids[:, 1:][real[:, 1:]])
    assert parts["kd"] == pytest.approx(float(kl), rel=1e-5) and parts["ce"] == pytest.approx(float(ce), rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * float(kl) + 2.0 * float(ce), rel=1e-5)


def test_perplexity_is_exp_of_mean_token_nll(teacher: Any) -> None:
    import torch

    from edgellm.train.causal import encode_lm, lm_perplexity

    seqs = encode_lm(teacher.tokenizer, SAMPLE_TEXTS[:5], 64)
    total, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            logits = teacher.model(torch.tensor([s])).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(s[1:]), reduction="sum"))
            count += len(s) - 1
    out = lm_perplexity(teacher.model, seqs, pad_id=0, batch_size=2)  # padded batches give the same numbers
    assert out["tokens"] == count
    assert out["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_lm_data_merges_corpora_split_by_split(text_file: Path, tmp_path: Path) -> None:
    from edgellm.errors import DataError
    from edgellm.recipe import DataConfig, SplitConfig
    from edgellm.train.causal import load_lm_data

    other = tmp_path / "more.txt"
    other.write_text("\n".join(f"another sentence number {i}" for i in range(100)), encoding="utf-8")
    split = SplitConfig(validation=0.1, test=0.2, seed=3)
    one = load_lm_data(DataConfig(path=str(text_file), split=split))
    assert one.labels is None and len(one.test) > 0
    with pytest.raises(DataError, match=r"'poems' is not a built-in corpus"):
        load_lm_data(DataConfig(path=str(text_file)), corpora=["poems"])
    with pytest.raises(DataError, match="no text for the causal LM"):
        load_lm_data(DataConfig(), corpora=[])
    # a second source keeps its own held-out rows
    from edgellm.data import load_task_data

    two = load_task_data(DataConfig(path=str(other), split=split), task="text-generation")
    assert len(one.test) + len(two.test) == len(one.test) + 20


def test_corpus_rows_caps_one_corpus_of_the_mix() -> None:
    from edgellm.errors import ConfigError
    from edgellm.recipe import DataConfig, SplitConfig, recipe_from_dict
    from edgellm.train.causal import load_lm_data

    split = SplitConfig(validation=0.1, test=0.1, seed=13)
    data = load_lm_data(DataConfig(split=split), corpora=["tweets", "sotu"], corpus_rows={"sotu": 300})
    sizes = {p["name"]: p for p in data.source["parts"]}
    assert set(sizes) == {"tweets", "sotu"}
    counts = {name: sum(1 for e in data.splits().values() for i in e.ids if i.startswith(name + ":"))
              for name in sizes}
    assert counts == {"tweets": 4200, "sotu": 300}  # tweets whole, sotu a seeded sample of 300 passages
    again = load_lm_data(DataConfig(split=split), corpora=["tweets", "sotu"], corpus_rows={"sotu": 300})
    assert again.train.sha256() == data.train.sha256()
    base = {"teacher": "t", "task": "text-generation", "causal_lm": {"corpora": ["tweets", "sotu"]}}
    for rows, message in (({"moby-dick": 10}, r"corpus_rows names \['moby-dick'\]"),
                          ({"sotu": 0}, r"corpus_rows.sotu")):
        with pytest.raises(ConfigError, match=message):
            recipe_from_dict({**base, "causal_lm": {**base["causal_lm"], "corpus_rows": rows}})


def test_short_distillation_moves_the_student_to_the_teacher(teacher: Any, text_file: Path, tmp_path: Path) -> None:
    from edgellm.recipe import CausalLMConfig, DataConfig, DistillConfig, SplitConfig
    from edgellm.train.causal import distill_causal_lm, load_lm_data

    data = load_lm_data(DataConfig(path=str(text_file), split=SplitConfig(validation=0.1, test=0.1), max_length=32))
    config = DistillConfig(num_layers=2, epochs=8, batch_size=16, learning_rate=1e-2, temperature=1.0, alpha_ce=0.0,
                           eval_every=1000, warmup_ratio=0.0, precision="fp32")
    lm = CausalLMConfig(layer_selection="uniform", eval_rows=40, freeze_embeddings=True, sample_tokens=8)
    extra = ["the film plot was good and fun", "a great story but a slow plot", "the boring film was bad",
             "fun and good but slow"]
    student = distill_causal_lm(teacher, data, config, lm, tmp_path / "work", extra_texts=extra, progress=False)
    m = student.metrics
    assert m["extra_texts"] == 4 and m["train_rows"] == len(data.train) + 4  # teacher-written rows added
    assert m["teacher_layers"] == [0, 5] and student.model.config.num_hidden_layers == 2
    assert m["kl_teacher_student"]["validation"] < 0.75 * m["kl_teacher_student"]["initial_validation"]
    ppl = m["perplexity"]  # the student's validation perplexity moves to the teacher's
    assert abs(ppl["student_validation"] - ppl["teacher_validation"]) < \
        0.5 * abs(ppl["student_initial_validation"] - ppl["teacher_validation"])
    assert set(ppl) == {"teacher_validation", "student_initial_validation", "student_validation", "teacher_test",
                        "student_initial_test", "student_test"}
    assert m["steps"] == 8 * math.ceil(m["train_rows"] / 16) and m["train_tokens"] > 0
    # the frozen tied embedding is still the teacher's
    import torch

    torch.testing.assert_close(student.model.get_input_embeddings().weight,
                               teacher.model.get_input_embeddings().weight)
    # rerunning the same call returns the finished result from the work folder
    again = distill_causal_lm(teacher, data, config, lm, tmp_path / "work", extra_texts=extra, progress=False)
    assert again.metrics["steps"] == m["steps"]
    torch.testing.assert_close(again.model.model.layers[0].mlp.up_proj.weight, student.model.model.layers[0].mlp.up_proj.weight)


# (sequences, length, separator, rows): one comment each
PACK_CASES = [
    ([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, 0, [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9]]),  # EOS between texts
    ([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 3, None, [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),  # no separator
    ([[1, 2, 3, 4, 5, 6, 7]], 3, 0, [[1, 2, 3], [4, 5, 6]]),  # a 1-token tail is dropped
    ([], 8, 0, []),  # nothing to pack
]


@pytest.mark.parametrize("sequences, length, separator, rows", PACK_CASES)
def test_pack_rows(sequences: list[list[int]], length: int, separator: int | None, rows: list[list[int]]) -> None:
    from edgellm.train.causal import pack_rows

    assert pack_rows(sequences, length, separator=separator) == rows


def test_packed_distillation_trains_on_full_rows(teacher: Any, text_file: Path, tmp_path: Path) -> None:
    from edgellm.recipe import CausalLMConfig, DataConfig, DistillConfig, SplitConfig
    from edgellm.train.causal import distill_causal_lm, encode_lm, load_lm_data

    data = load_lm_data(DataConfig(path=str(text_file), split=SplitConfig(validation=0.1, test=0.1), max_length=32))
    config = DistillConfig(num_layers=2, epochs=1, batch_size=4, learning_rate=1e-2, temperature=1.0, alpha_ce=0.5,
                           eval_every=1000, warmup_ratio=0.0, precision="fp32")
    lm = CausalLMConfig(layer_selection="uniform", eval_rows=20, pack_tokens=48, sample_tokens=8)
    extra = ["the film plot was good and fun " * 12]  # longer than sample_tokens: kept whole when packed
    student = distill_causal_lm(teacher, data, config, lm, tmp_path / "work", extra_texts=extra, progress=False)
    m = student.metrics
    tokens = sum(len(ids) for ids in encode_lm(teacher.tokenizer, list(data.train.texts), 32))
    tokens += len(encode_lm(teacher.tokenizer, extra, 4096)[0])
    separators = len(data.train)  # one between each two of the len(data.train) + 1 texts
    assert m["train_rows"] == math.ceil((tokens + separators) / 48)
    assert m["steps"] == math.ceil(m["train_rows"] / 4) and m["train_tokens"] == tokens + separators
    assert m["kl_teacher_student"]["validation"] < m["kl_teacher_student"]["initial_validation"]


def test_budgeted_distillation_plans_then_trains_within_its_epochs(teacher: Any, text_file: Path,
                                                                  tmp_path: Path) -> None:
    import json

    from edgellm.recipe import CausalLMConfig, DataConfig, DistillConfig, SplitConfig
    from edgellm.train.causal import distill_causal_lm, load_lm_data

    data = load_lm_data(DataConfig(path=str(text_file), split=SplitConfig(validation=0.1, test=0.1), max_length=32))
    config = DistillConfig(num_layers=2, epochs=3, batch_size=4, learning_rate=1e-2, eval_every=5,
                           precision="fp32")
    # an hour for a tiny model: every re-plan asks for all the steps distill.epochs allows, and no more
    lm = CausalLMConfig(layer_selection="uniform", eval_rows=20, sample_tokens=8, budget_minutes=60)
    student = distill_causal_lm(teacher, data, config, lm, tmp_path / "work", progress=False)
    m = student.metrics
    plan = json.loads((tmp_path / "work" / "budget.json").read_text())
    assert m["budget"] == plan and plan["seconds_per_step"] > 0 and plan["step_budget_s"] > 0
    cap = 3 * plan["steps_per_epoch"]
    assert m["steps"] == cap and m["replans"] and all(r["total"] == cap for r in m["replans"])


def test_quantize_modes_for_decoders() -> None:
    from edgellm.errors import ConfigError
    from edgellm.quantize.decoder import decoder_quantize_modes
    from edgellm.recipe import QuantizeConfig

    assert decoder_quantize_modes(None) == ((), False)
    assert decoder_quantize_modes(QuantizeConfig(mode="none")) == ((), False)
    assert decoder_quantize_modes(QuantizeConfig(mode="dynamic")) == (("dynamic",), True)  # + the lossy plain INT8
    assert decoder_quantize_modes(QuantizeConfig(mode="weight-only", backends=["onnxruntime"])) == ((), False)
    with pytest.raises(ConfigError, match="'static' is not supported for text-generation"):
        decoder_quantize_modes(QuantizeConfig(mode="static"))
