"""Pruning on tiny seeded models: parameter counts by formula, exactness, ONNX export, GQA decoders, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from edgellm.config import from_dict  # noqa: E402
from edgellm.errors import ConfigError, PruningError  # noqa: E402
from edgellm.recipe import PruneConfig  # noqa: E402

# Tiny shapes, written once: BERT H=32, 4 heads of d=8, FFN 64, 2 layers; Llama H=48, 6 query heads in 3 KV groups
# (g=2) of d=8, FFN 96, 3 layers.
H, HEADS, D, FFN = 32, 4, 8, 64
LH, LQ, LKV, LD, LFFN = 48, 6, 3, 8, 96


def bert_classifier(layers: int = 2, seed: int = 0) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=H, num_hidden_layers=layers, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


def tiny_llama(seed: int = 0, layers: int = 3) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=LH, intermediate_size=LFFN, num_hidden_layers=layers,
                         num_attention_heads=LQ, num_key_value_heads=LKV, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def batches(seed: int = 1, n: int = 3, vocab: int = 120, labels: bool = True) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (4, 10), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if labels:
            batch["labels"] = torch.randint(0, 2, (4,), generator=g)
        out.append(batch)
    return out


def params(model: Any) -> int:
    from edgellm.models import count_parameters

    return count_parameters(model)


def logits(model: Any, batch: dict[str, Any]) -> Any:
    with torch.no_grad():
        feeds = {k: v for k, v in batch.items() if k != "labels"}
        return model(**feeds).logits


# --- parameter counts by formula --------------------------------------------------------------------------------

def test_bert_parameter_count_after_removing_heads_and_neurons_equals_formula() -> None:
    from edgellm.prune import remove_heads, remove_neurons

    model = bert_classifier()
    before = params(model)
    remove_heads(model, {0: [1, 3], 1: [0]})  # k = 3 heads
    per_head = 3 * (H * D + D) + D * H  # q, k, v rows with biases + output-projection columns
    assert params(model) == before - 3 * per_head
    remove_neurons(model, {0: list(range(10)), 1: list(range(20, 30))})  # n = 10 per layer, 2 layers
    per_neuron = H + 1 + H  # intermediate row + bias, output column
    assert params(model) == before - 3 * per_head - 20 * per_neuron
    assert model.config.intermediate_size == FFN - 10
    assert model.config.pruned_heads == {0: [1, 3], 1: [0]}
    assert [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer] == [2, 3]


def test_llama_parameter_count_after_removing_kv_groups_and_neurons_equals_formula() -> None:
    from edgellm.prune import remove_heads, remove_neurons

    model = tiny_llama()
    before = params(model)
    remove_heads(model, {0: [1], 1: [0], 2: [2]})  # one KV group (1 KV head + 2 query heads) per layer
    g = LQ // LKV
    per_group = g * LD * LH + 2 * LD * LH + g * LD * LH  # q rows, k and v rows, o columns (no biases)
    assert params(model) == before - 3 * per_group
    remove_neurons(model, {i: list(range(0, 96, 3)) for i in range(3)})  # 32 per layer
    assert params(model) == before - 3 * per_group - 3 * 32 * 3 * LH  # gate row, up row, down column
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (4, 2, LD, 64)


def test_flops_per_token_follow_the_shapes() -> None:
    from edgellm.prune import model_stats, remove_heads

    model = bert_classifier()
    seq = model_stats(model)["flops_seq_len"]
    per_layer = lambda heads, ffn: 2 * 4 * H * heads * D + 4 * seq * heads * D + 4 * H * ffn  # noqa: E731
    assert model_stats(model)["flops_per_token"] == 2 * per_layer(4, FFN)
    remove_heads(model, {0: [0]})
    assert model_stats(model)["flops_per_token"] == per_layer(3, FFN) + per_layer(4, FFN)


# --- exactness: units that were already zero ---------------------------------------------------------------------

def test_removing_zero_heads_and_neurons_leaves_bert_outputs_unchanged() -> None:
    from edgellm.prune import remove_heads, remove_neurons

    model = bert_classifier()
    with torch.no_grad():
        for layer, head in ((0, 2), (1, 0)):
            attn = model.bert.encoder.layer[layer].attention
            rows = slice(head * D, (head + 1) * D)
            for m in (attn.self.query, attn.self.key, attn.self.value):
                m.weight[rows] = 0
                m.bias[rows] = 0
            attn.output.dense.weight[:, rows] = 0
        for layer in model.bert.encoder.layer:
            layer.output.dense.weight[:, 40:] = 0  # neurons 40..63 contribute nothing
    batch = batches()[0]
    reference = logits(model, batch)
    remove_heads(model, {0: [2], 1: [0]})
    remove_neurons(model, {0: list(range(40, 64)), 1: list(range(40, 64))})
    assert params(model) < params(bert_classifier())
    torch.testing.assert_close(logits(model, batch), reference, rtol=0, atol=0)


def test_removing_a_zero_kv_group_and_a_zero_layer_leaves_llama_generation_unchanged() -> None:
    from edgellm.prune import remove_heads, remove_layers

    model = tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:  # group 1 owns query heads 2, 3 -> o_proj columns 16..31
            layer.self_attn.o_proj.weight[:, 16:32] = 0
        last = model.model.layers[1]  # a pre-norm residual block with zero outputs is the identity
        last.self_attn.o_proj.weight.zero_()
        last.mlp.down_proj.weight.zero_()
    prompt = torch.tensor([[1, 17, 33, 45, 9]])
    reference_logits = model(prompt).logits
    reference = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    remove_heads(model, {i: [1] for i in range(3)})
    remove_layers(model, [1])
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    torch.testing.assert_close(model(prompt).logits, reference_logits, rtol=0, atol=0)
    assert model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0).tolist() == reference.tolist()


# --- importance -----------------------------------------------------------------------------------------------------

def test_taylor_scores_rank_a_dead_head_and_dead_neurons_last() -> None:
    from edgellm.prune import arch_for, prune_model, score_units

    model = bert_classifier()
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.output.dense.weight[:, 3 * D:] = 0  # head 3 of layer 1
        model.bert.encoder.layer[0].output.dense.weight[:, :8] = 0  # neurons 0..7 of layer 0
    scores = score_units(model, PruneConfig(), batches())
    assert scores.method == "taylor" and scores.batches == 3
    assert float(scores.units[1][3]) == 0.0 and float(scores.units[1][:3].min()) > 0
    assert scores.neurons[0][:8].abs().sum() == 0 and bool((scores.neurons[0][8:] > 0).all())
    report = prune_model(model, config=PruneConfig(heads=0.125, ffn=0.125), batches=batches())
    assert report.removed["units"] == {1: [3]}
    assert model.config.pruned_heads == {1: [3]}
    assert report.after["ffn_per_layer"] == [56, 56]
    assert arch_for(model).shape()["heads_per_layer"] == [4, 3]


def test_taylor_without_data_falls_back_to_magnitude_and_says_so() -> None:
    from edgellm.prune import prune_model

    model = bert_classifier()
    report = prune_model(model, config=PruneConfig(ffn=0.25), batches=None)
    assert report.importance == "magnitude"
    assert report.after["ffn_per_layer"] == [48, 48]


def test_layer_sensitivity_keeps_the_layer_that_matters() -> None:
    from edgellm.prune import prune_model

    model = tiny_llama()
    with torch.no_grad():  # layer 1 is the identity: skipping it costs nothing
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    report = prune_model(model, config=PruneConfig(layers=0.3), batches=batches(labels=False, vocab=128))
    assert report.removed["layers"] == [1]
    assert report.before["layers"] == 3 and report.after["layers"] == 2


def test_parameter_budget_is_met_with_the_smallest_ratio() -> None:
    from edgellm.prune import prune_model

    full = params(bert_classifier())
    target = full - 9000
    model = bert_classifier()
    report = prune_model(model, config=PruneConfig(target_params=target, importance="magnitude"))
    assert params(model) <= target
    assert report.budget_ratio is not None and report.budget_ratio > 0
    smaller = bert_classifier()
    prune_model(smaller, config=PruneConfig(heads=report.budget_ratio - 0.005, ffn=report.budget_ratio - 0.005,
                                            importance="magnitude"))
    assert params(smaller) > target


def test_budget_below_what_heads_and_ffn_can_reach_is_refused() -> None:
    from edgellm.prune import prune_model

    with pytest.raises(PruningError, match="cannot be reached.*trim the vocabulary"):
        prune_model(bert_classifier(), config=PruneConfig(target_params=1000, importance="magnitude"))


# --- export and reload ------------------------------------------------------------------------------------------

def test_pruned_bert_with_uneven_heads_reloads_exports_to_onnx_and_matches_torch(tmp_path: Path,
                                                                                  tiny_bert_factory: Any) -> None:
    import onnx
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from edgellm.data import SAMPLE_TEXTS
    from edgellm.exporting import write_encoder_models
    from edgellm.prune import make_batches, prune_model

    folder = tiny_bert_factory(task="text-classification", layers=3, hidden=32, heads=4, intermediate=64)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    data = make_batches(tokenizer, SAMPLE_TEXTS, [i % 2 for i in range(len(SAMPLE_TEXTS))], batch_size=8,
                        max_length=32)
    report = prune_model(model, config=PruneConfig(heads=0.4, ffn=0.5, layers=0.3), batches=data)
    assert report.after["layers"] == 2 and report.after["ffn_per_layer"] == [32, 32]
    assert sum(report.after["heads_per_layer"]) == 8 - 3  # 40% of the 8 heads left after the layer drop
    model.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["intermediate_size"] == 32
    feeds = tokenizer(SAMPLE_TEXTS[:4], padding=True, return_tensors="pt")
    torch.testing.assert_close(logits(reloaded, dict(feeds)), logits(model, dict(feeds)), rtol=0, atol=0)

    small = write_encoder_models(reloaded, tokenizer, tmp_path / "small", task="text-classification", max_length=32,
                                 formats=("onnx", "openvino"), texts=SAMPLE_TEXTS, atol=1e-5)
    assert [e.backend for e in small] == ["onnxruntime", "openvino"]  # both runtimes ran it, checked vs torch
    assert max(e.metrics["vs_torch"]["max_abs_diff"] for e in small) <= 1e-5
    full = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    big = write_encoder_models(full, tokenizer, tmp_path / "big", task="text-classification", max_length=32,
                               formats=("onnx",), texts=SAMPLE_TEXTS[:4])
    assert small[0].metrics["size_bytes"] < big[0].metrics["size_bytes"]
    graph = onnx.load(str(tmp_path / "small" / "model.onnx")).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    matmul = sorted(shapes[n] for node in graph.node if node.op_type == "MatMul" for n in node.input if n in shapes)
    # per kept layer: q, k, v (32 -> heads*8), output (heads*8 -> 32), FFN in (32 -> 32) and out (32 -> 32)
    heads = report.after["heads_per_layer"]
    expected = sorted([(32, h * D)] * 3 + [(h * D, 32), (32, 32), (32, 32)] for h in heads)
    assert matmul == sorted(s for group in expected for s in group)


def test_llama_with_gqa_prunes_saves_reloads_and_generates(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    from edgellm.prune import prune_model

    model = tiny_llama(layers=4)
    report = prune_model(model, config=PruneConfig(heads=0.34, ffn=0.25, layers=0.25),
                         batches=batches(labels=False, vocab=128))
    assert report.importance == "taylor"
    assert report.after["kv_groups_per_layer"] == [2, 2, 2]
    assert report.after["ffn_per_layer"] == [72, 72, 72]
    assert report.after["flops_per_token"] < report.before["flops_per_token"]
    prompt = torch.tensor([[1, 17, 33, 45, 9], [1, 5, 6, 7, 8]])
    tokens = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert tokens.shape == (2, 15)
    model.save_pretrained(tmp_path / "lm")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "lm").eval()
    cfg = reloaded.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (3, 4, 2, LD)
    assert reloaded.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0).tolist() == tokens.tolist()


# --- unstructured ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_sparsity_is_permanent_and_measured(scope: str, tmp_path: Path) -> None:
    from transformers import BertForSequenceClassification

    from edgellm.prune import prune_model

    model = bert_classifier()
    keys = set(model.state_dict())
    report = prune_model(model, config=PruneConfig(sparsity=0.5, sparsity_scope=scope))
    linears = [m for layer in model.bert.encoder.layer for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    total = sum(m.weight.numel() for m in linears)
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    assert report.sparsity["measured"] == zeros / total == 0.5  # every matrix here has an even size
    if scope == "layer":
        assert all(int((m.weight == 0).sum()) == m.weight.numel() // 2 for m in linears)
    assert int((model.classifier.weight == 0).sum()) == 0  # the head stays dense
    assert set(model.state_dict()) == keys  # no weight_orig / weight_mask
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    model.save_pretrained(tmp_path / "sparse")
    again = BertForSequenceClassification.from_pretrained(tmp_path / "sparse")
    assert int((again.bert.encoder.layer[0].intermediate.dense.weight == 0).sum()) == int(
        (model.bert.encoder.layer[0].intermediate.dense.weight == 0).sum())


# --- bad inputs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("heads", 1.0),  # the upper end is open: removing all heads is not pruning
    ("ffn", 1.5),
    ("layers", -0.1),
    ("sparsity", 1.0),
])
def test_ratios_outside_zero_one_are_refused(field: str, value: float) -> None:
    from edgellm.prune import prune_model

    with pytest.raises(ConfigError, match=rf"prune\.{field} = {value} is outside \[0\.0, 1\.0\)"):
        from_dict(PruneConfig, {field: value}, "prune")
    with pytest.raises(ConfigError, match=rf"prune\.{field} = {value} is outside"):
        prune_model(bert_classifier(), config=PruneConfig(**{field: value}))


def test_plan_refuses_a_bad_ratio_directly() -> None:
    from edgellm.prune import arch_for, magnitude_scores, plan_pruning

    arch = arch_for(bert_classifier())
    with pytest.raises(PruningError, match=r"prune\.heads = 1\.2 is outside \[0, 1\)"):
        plan_pruning(arch, magnitude_scores(arch), heads=1.2)


def test_target_params_with_ratios_is_refused() -> None:
    with pytest.raises(ConfigError, match="either target_params or heads / ffn"):
        from_dict(PruneConfig, {"target_params": 1000, "ffn": 0.3}, "prune")


def test_pruning_every_head_of_a_layer_is_refused_and_leaves_the_model_intact() -> None:
    from edgellm.prune import remove_heads

    model = bert_classifier()
    before = params(model)
    with pytest.raises(PruningError, match="leave layer 0 with no head; keep at least one, or remove the whole layer"):
        remove_heads(model, {0: [0, 1, 2, 3]})
    assert params(model) == before
    llama = tiny_llama()
    with pytest.raises(PruningError, match="no kv_group"):
        remove_heads(llama, {0: [0, 1, 2]})


def test_head_ratios_that_would_empty_layers_are_refused() -> None:
    from edgellm.prune import prune_model

    with pytest.raises(PruningError, match="would remove all 3 kv_groups of each layer"):
        prune_model(tiny_llama(), config=PruneConfig(heads=0.9, importance="magnitude"))
    with pytest.raises(PruningError, match="leaving a layer with none; keep at least one head per layer"):
        prune_model(bert_classifier(), config=PruneConfig(heads=0.9, importance="magnitude"))


def test_uneven_widths_are_refused_before_any_cut() -> None:
    from edgellm.prune import remove_heads, remove_neurons

    model = bert_classifier()
    before = params(model)
    with pytest.raises(PruningError, match=r"FFN widths would differ between layers \(\[60, 64\]\)"):
        remove_neurons(model, {0: [0, 1, 2, 3]})
    assert params(model) == before
    with pytest.raises(PruningError, match="KV groups would differ between layers"):
        remove_heads(tiny_llama(), {0: [1]})


def test_out_of_range_positions_are_refused() -> None:
    from edgellm.prune import remove_heads, remove_layers

    with pytest.raises(PruningError, match=r"layer 0 has 4 heads, so \[7\] are out of range"):
        remove_heads(bert_classifier(), {0: [7]})
    with pytest.raises(PruningError, match=r"layer 5 does not exist \(the model has 2 layers\)"):
        remove_heads(bert_classifier(), {5: [0]})
    with pytest.raises(PruningError, match="would leave none of the 2 layers"):
        remove_layers(bert_classifier(), [0, 1])


def test_an_architecture_we_cannot_prune_is_named() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from edgellm.prune import prune_model

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16))
    with pytest.raises(PruningError, match=r"cannot prune GPT2LMHeadModel \(model_type 'gpt2'\)"):
        prune_model(model, config=PruneConfig(ffn=0.5))


# --- the stage on folders, and the CLI ---------------------------------------------------------------------------

POSITIVE = "great good fun love best brilliant beautiful funny".split()
NEGATIVE = "bad awful boring hate worst dull terrible waste".split()
NOUNS = "film movie plot story acting script music ending".split()


@pytest.fixture
def reviews_csv(tmp_path: Path) -> Path:
    """80 distinct labelled sentences made of the tiny vocabulary's words."""
    import csv

    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i, noun in enumerate(NOUNS):
            for j in range(5):
                writer.writerow([f"the {noun} was {POSITIVE[(i + j) % 8]}", "positive"])
                writer.writerow([f"the {noun} was {NEGATIVE[(i + j) % 8]}", "negative"])
    return path


def test_prune_folder_writes_a_reloadable_model_and_a_report(tiny_bert_factory: Any, reviews_csv: Path,
                                                             tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from edgellm.prune import prune
    from edgellm.recipe import DataConfig

    folder = tiny_bert_factory(task="text-classification")
    out = tmp_path / "pruned"
    report = prune(folder, out, config=PruneConfig(heads=0.25, ffn=0.5, sparsity=0.2, recovery_epochs=0.0,
                                                   importance_batches=2, batch_size=8),
                   data=DataConfig(path=str(reviews_csv)))
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "config.json", "model.safetensors", "prune_report.json", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json"]
    assert json.loads((out / "prune_report.json").read_text())["after"] == report["after"]
    assert report["importance"] == "taylor" and report["importance_batches"] == 2
    assert report["after"]["heads_per_layer"] == [3, 3] and report["after"]["ffn_per_layer"] == [32, 32]
    assert report["sparsity"]["measured"] == pytest.approx(0.2, abs=1e-3)
    metrics = report["metrics"]
    assert metrics["split"] == "validation" and metrics["before"]["examples"] == metrics["after"]["examples"] == 8
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert params(reloaded) == report["after"]["parameters"]
    assert report["size_bytes"]["after"] < report["size_bytes"]["before"]


def test_prune_folder_refuses_to_replace_user_files(tiny_bert_factory: Any, tmp_path: Path) -> None:
    from edgellm.errors import OutputExistsError
    from edgellm.prune import prune

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    config = PruneConfig(ffn=0.5, importance="magnitude", recovery_epochs=0.0)
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        prune(tiny_bert_factory(task="text-classification"), out, config=config)
    with pytest.raises(OutputExistsError, match="is not a prune output"):
        prune(tiny_bert_factory(task="text-classification"), out, config=config, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_prune_writes_the_folder_and_reports_bad_input_in_one_line(tiny_bert_factory: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgellm.cli import cli

    folder = str(tiny_bert_factory(task="text-classification"))
    out = tmp_path / "cli-pruned"
    runner = CliRunner()
    result = runner.invoke(cli, ["prune", folder, "-o", str(out), "--ffn", "0.25", "--heads", "0.25",
                                 "--importance", "magnitude", "--recovery-epochs", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prune_report.json").read_text())
    assert report["after"]["ffn_per_layer"] == [48, 48] and report["importance"] == "magnitude"
    assert f"parameters   {report['before']['parameters']:>14,} -> {report['after']['parameters']:,}" in result.output
    bad = runner.invoke(cli, ["prune", folder, "-o", str(tmp_path / "x"), "--heads", "1.0"])
    assert bad.exit_code == 1
    assert "error (ConfigError): prune.heads = 1.0 is outside [0.0, 1.0)" in bad.output
    assert not (tmp_path / "x").exists()


def test_cli_prune_names_an_architecture_it_cannot_prune(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from transformers import GPT2Config, GPT2LMHeadModel

    from edgellm.cli import cli

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16)).save_pretrained(
        tmp_path / "gpt2")
    result = CliRunner().invoke(cli, ["prune", str(tmp_path / "gpt2"), "-o", str(tmp_path / "out"), "--ffn", "0.5",
                                      "--task", "text-generation"])
    assert result.exit_code == 1
    assert "error (PruningError): cannot prune GPT2LMHeadModel (model_type 'gpt2')" in result.output


def test_recovery_distils_the_pruned_classifier_with_the_trainer(tiny_bert_factory: Any, reviews_csv: Path,
                                                                 tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from edgellm.prune import prune
    from edgellm.recipe import DataConfig, DistillConfig

    folder = tiny_bert_factory(task="text-classification")
    data = DataConfig(path=str(reviews_csv))
    common = dict(heads=0.25, ffn=0.5, importance_batches=2, batch_size=8)
    plain = prune(folder, tmp_path / "plain", config=PruneConfig(**common, recovery_epochs=0.0), data=data)
    distill = DistillConfig(batch_size=16, learning_rate=1e-3, eval_every=2, precision="fp32")
    report = prune(folder, tmp_path / "recovered", config=PruneConfig(**common, recovery_epochs=2.0), data=data,
                   distill=distill, progress=False)
    recovery = report["metrics"]["recovery"]
    assert recovery["method"] == "edgellm.train.distill" and recovery["epochs"] == 2.0
    assert recovery["train"]["steps"] == 2 * 4  # 64 training rows / 16 per batch, two epochs
    assert any((tmp_path / "recovered.work" / "recovery").iterdir())  # the trainer's checkpoints / result
    assert report["removed"] == plain["removed"] and report["after"] == plain["after"]  # same units went
    a = load_file(str(tmp_path / "plain" / "model.safetensors"))
    b = load_file(str(tmp_path / "recovered" / "model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # recovery trained the weights
    assert report["metrics"]["before"] == plain["metrics"]["before"]
    assert recovery["alpha_hidden"] == 0.0
    # recovery_alpha_hidden adds the hidden-state loss (each pruned layer against its unpruned self), recovery only
    hidden = prune(folder, tmp_path / "hidden", data=data, distill=distill, progress=False,
                   config=PruneConfig(**common, recovery_epochs=2.0, recovery_alpha_hidden=1.0))
    assert hidden["metrics"]["recovery"]["alpha_hidden"] == 1.0 and distill.alpha_hidden == 0.0
    c = load_file(str(tmp_path / "hidden" / "model.safetensors"))
    assert any(not torch.equal(b[k], c[k]) for k in b)  # another loss, other weights
    with pytest.raises(ConfigError, match=r"prune\.recovery_alpha_hidden = -1\.0 is outside \[0\.0, inf\]"):
        PruneConfig(recovery_alpha_hidden=-1.0).validate("prune")


def test_prune_folder_recovers_a_causal_lm_and_it_still_generates(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from edgellm.prune import prune
    from edgellm.recipe import DataConfig, DistillConfig
    from tests.conftest import save_tiny_tokenizer

    folder = tmp_path / "llama"
    tok = save_tiny_tokenizer(folder)
    tiny_llama().save_pretrained(folder)
    lines = [f"the {n} was {w} and {v}" for n in NOUNS for w in POSITIVE for v in NEGATIVE[:2]]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    report = prune(folder, tmp_path / "out", config=PruneConfig(heads=0.34, ffn=0.25, importance_batches=2,
                                                               batch_size=8, recovery_epochs=1.0),
                   data=DataConfig(path=str(tmp_path / "corpus.txt")),
                   distill=DistillConfig(batch_size=32, learning_rate=1e-3, eval_every=2, precision="fp32"),
                   progress=False)
    assert report["task"] == "text-generation" and report["importance"] == "taylor"
    assert report["after"]["kv_groups_per_layer"] == [2, 2, 2] and report["after"]["ffn_per_layer"] == [72, 72, 72]
    metrics = report["metrics"]
    assert metrics["recovery"]["steps"] == 4  # 102 training lines / 32 per batch
    assert metrics["after"]["perplexity"] < metrics["before"]["perplexity"] * 10
    model = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    prompt = AutoTokenizer.from_pretrained(tmp_path / "out")(["the film was"], return_tensors="pt")["input_ids"]
    assert model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id).shape[1] == \
        prompt.shape[1] + 6


def test_prune_folder_recovers_an_embedder_against_the_unpruned_vectors(tiny_bert_factory: Any, reviews_csv: Path,
                                                                         tmp_path: Path) -> None:
    from transformers import AutoModel

    from edgellm.prune import prune
    from edgellm.recipe import DataConfig, DistillConfig

    folder = tiny_bert_factory(task="feature-extraction")
    report = prune(folder, tmp_path / "emb", config=PruneConfig(heads=0.25, ffn=0.25, recovery_epochs=1.0),
                   data=DataConfig(path=str(reviews_csv)),
                   distill=DistillConfig(batch_size=16, learning_rate=1e-3, eval_every=2, precision="fp32"),
                   progress=False)
    assert report["task"] == "feature-extraction"
    assert report["importance"] == "magnitude"  # a bare encoder has no task loss to take gradients of
    metrics = report["metrics"]
    assert metrics["before"] is None  # an embedder is judged against the unpruned vectors, after pruning only
    assert -1.0 <= metrics["after"]["spearman"] <= 1.0 and metrics["after"]["pairs"] > 0
    assert metrics["recovery"]["train"]["steps"] == 4
    assert params(AutoModel.from_pretrained(tmp_path / "emb", add_pooling_layer=False)) == report["after"]["parameters"]
