"""Every encoder family of edgellm.families through every stage, on tiny seeded models built from configs
(tests/families.py): one parametrized template per stage; what a family refuses is checked to be refused, by name,
before any work."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from edgellm.errors import UnsupportedArchitectureError
from edgellm.families import FAMILIES, compatibility_markdown, supports
from tests.families import TEST, TOKENIZERS, TRAIN, build_family

ALL = list(TOKENIZERS)
SUBWORD = [f for f in ALL if TOKENIZERS[f] != "WordPiece"]
MAX_LENGTH = 32
# Not a training sentence, but each of its words appears in TRAIN in the same position (first word or not), so
# every tokenizer model splits it into kept tokens exactly as before trimming.
SEEN_WORDS = "the film was dull and the acting was awful"
COMPAT_DOC = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    cache: dict[tuple[str, str], Path] = {}

    def make(family: str, task: str = "text-classification") -> Path:
        if (family, task) not in cache:
            cache[family, task] = build_family(family, tmp_path_factory.mktemp(family) / "model", task=task)
        return cache[family, task]

    return make


def load(folder: Path, task: str = "text-classification") -> Any:
    from edgellm.train import load_model

    return load_model(folder, task=task)


def torch_out(tm: Any, texts: list[str], tokenizer: Any = None, model: Any = None) -> Any:
    """Logits, or mean-pooled vectors, of `tm` (or `model` with tm's task) on `texts`."""
    import torch

    enc = (tokenizer or tm.tokenizer)(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    feeds = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        out = (model or tm.model)(**feeds)
    if tm.task == "text-classification":
        return out.logits
    mask = feeds["attention_mask"][..., None].float()
    return (out.last_hidden_state * mask).sum(1) / mask.sum(1)  # mean pooling


def write_artifact(tm: Any, folder: Path, formats: tuple[str, ...]) -> list[Any]:
    from edgellm.artifact import write_manifest
    from edgellm.exporting import encoder_manifest, write_encoder_models

    folder.mkdir(parents=True)
    tm.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    entries = write_encoder_models(tm.model, tm.tokenizer, folder, task=tm.task, max_length=MAX_LENGTH,
                                   formats=formats, texts=TRAIN + TEST, atol=1e-4)
    write_manifest(folder, encoder_manifest(tm.model, task=tm.task, models=entries, max_length=MAX_LENGTH,
                                            source="tiny", embedding={"pooling": "mean"}))
    return entries


def formats_for(family: str) -> tuple[str, ...]:
    return ("onnx", "openvino") if "export.openvino" not in FAMILIES[family].refused else ("onnx",)


# --- export, INT8, runtime ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_classifier_exports_equal_torch_quantize_to_int8_and_classify_in_the_runtime(
        family: str, family_dir: Callable[..., Path], tmp_path: Path) -> None:
    import edgellm
    from edgellm.quantize.ort import QUANTIZED_OPS, quantize_onnx
    from edgellm.runtime.text import TextEncoder

    tm = load(family_dir(family))
    art = tmp_path / "artifact"
    entries = write_artifact(tm, art, formats_for(family))
    assert [e.backend for e in entries] == ["onnxruntime", "openvino"][: len(formats_for(family))]
    for entry in entries:
        assert entry.metrics["vs_torch"]["max_abs_diff"] <= 1e-4
        # the [CLS]-only last layer where the family allows it, the full graph where not
        assert entry.metrics["cls_only_last_layer"] is (FAMILIES[family].cls_only is None)
    expected = torch_out(tm, TRAIN + TEST).softmax(-1).numpy()
    for entry in entries:
        model = edgellm.load(str(art), model=entry.name)
        np.testing.assert_allclose(model.scores(TRAIN + TEST), expected, atol=1e-4)

    feeds = [TextEncoder(art / "tokenizer.json", max_length=MAX_LENGTH).encode(TRAIN[:4])]
    result = quantize_onnx(art / "model.onnx", art / "model-int8.onnx", mode="dynamic", model_type=family,
                           check_feeds=feeds)
    assert sum(n for op, n in result.ops.items() if op in QUANTIZED_OPS) >= 2 * 3  # >= 2 per layer
    # ONNX Runtime's transformer fusion ran where its optimizer knows the model type, and was checked
    assert result.settings["fused"] is (FAMILIES[family].ort_fusion is not None), result.settings["fusion"]
    from edgellm.runtime.ort import OrtBackend

    def run(path: Path) -> np.ndarray:
        backend = OrtBackend(path, device="cpu", threads=1, options={})
        return backend.run({s.name: feeds[0][s.name] for s in backend.inputs}, ["logits"])[0]

    int8, fp32 = run(art / "model-int8.onnx"), run(art / "model.onnx")
    assert int8.shape == (4, 2) and np.isfinite(int8).all()
    assert np.abs(int8 - fp32).max() < 0.1 * max(1.0, float(np.abs(fp32).max()))


@pytest.mark.parametrize("family", ALL)
def test_embedder_exports_equal_torch_and_embeds_in_the_runtime(family: str, family_dir: Callable[..., Path],
                                                                 tmp_path: Path) -> None:
    import edgellm

    tm = load(family_dir(family, "feature-extraction"), "feature-extraction")
    entries = write_artifact(tm, tmp_path / "artifact", ("onnx",))
    assert entries[0].metrics["vs_torch"]["max_abs_diff"] <= 1e-4
    vectors = edgellm.load(str(tmp_path / "artifact")).embed(TRAIN + TEST)
    np.testing.assert_allclose(vectors, torch_out(tm, TRAIN + TEST).numpy(), atol=1e-4)


# --- teacher fine-tune and student from teacher layers ---------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_teacher_fine_tunes_a_new_head_on_every_family(family: str, family_dir: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    import torch

    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig, FinetuneConfig
    from edgellm.train import finetune
    from tests.train.conftest import sentiment_rows

    rows = sentiment_rows(64)
    data_file = tmp_path / "rows.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_task_data(DataConfig(path=str(data_file), max_length=MAX_LENGTH))
    base = family_dir(family, "feature-extraction")
    before = {k: v.clone() for k, v in load(base, "feature-extraction").model.state_dict().items()}
    torch.set_num_threads(1)
    tm = finetune(str(base), data, FinetuneConfig(epochs=1, batch_size=16, eval_every=100, precision="fp32"),
                  tmp_path / "work", progress=False)
    assert tm.metrics["finetuned"] is True and tm.labels == ["negative", "positive"]
    assert type(tm.model).__name__.endswith("ForSequenceClassification")
    moved = [k for k, v in tm.model.base_model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert moved  # the encoder itself was trained, not only the new head
    reloaded = load(tmp_path / "work" / "model")
    assert reloaded.labels == ["negative", "positive"]


def test_a_modernbert_student_takes_teacher_layers_of_its_positions_kind(family_dir: Callable[..., Path]) -> None:
    """Tiny ModernBERT: layer 0 first (global, no attention norm), 1 and 2 sliding-window; 6 and 9 layers below
    (global every 3rd) show the choice for num_layers."""
    from edgellm.errors import ConfigError
    from edgellm.recipe import DistillConfig
    from edgellm.train.student import build_student, choose_layers, position_kinds

    tm = load(family_dir("modernbert"))
    with pytest.raises(ConfigError, match=r"student position 0 is a 'first' layer but teacher layer 1 is 'local'"):
        build_student(tm.model, DistillConfig(layers=[1, 2]))
    config = tm.model.config
    assert position_kinds(config, 9) == ["first", "local", "local", "global", "local", "local", "global", "local",
                                         "local"]
    # evenly spaced would be [2, 5, 8] and [1, 3, 5, 8]: the nearest layers of the positions' kinds instead
    assert choose_layers(DistillConfig(num_layers=3), 9, position_kinds(config, 9)) == [0, 5, 8]
    assert choose_layers(DistillConfig(num_layers=4), 9, position_kinds(config, 9)) == [0, 2, 5, 6]
    assert choose_layers(DistillConfig(num_layers=2), 3, position_kinds(config, 3)) == [0, 2]


@pytest.mark.parametrize("family", ALL)
def test_student_from_teacher_layers_equals_the_teacher_without_the_others(family: str,
                                                                          family_dir: Callable[..., Path]) -> None:
    from edgellm.models import count_parameters
    from edgellm.prune import arch_for
    from edgellm.recipe import DistillConfig
    from edgellm.train.student import build_student

    tm = load(family_dir(family))
    student = build_student(tm.model, DistillConfig(layers=[0, 2]))
    shallow = copy.deepcopy(tm.model)  # the teacher run without layer 1
    arch = arch_for(shallow)
    arch.set_layers([arch.layers()[0], arch.layers()[2]])
    shallow.config.num_hidden_layers = 2
    assert count_parameters(student) == count_parameters(shallow)
    np.testing.assert_allclose(torch_out(tm, TRAIN, model=student), torch_out(tm, TRAIN, model=shallow), atol=1e-6)
    narrow = build_student(tm.model, DistillConfig(layers=[0, 1, 2], ffn_size=48))
    arch = arch_for(tm.model)
    per_neuron = arch.neuron_params(arch.layers()[0])
    assert count_parameters(narrow) == count_parameters(tm.model) - 3 * 16 * per_neuron


# --- structured pruning ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_pruning_removes_zeroed_units_by_the_formula_and_keeps_outputs(family: str, family_dir: Callable[..., Path],
                                                                      tmp_path: Path) -> None:
    import torch

    from edgellm.models import count_parameters
    from edgellm.prune import arch_for, remove_heads, remove_layers, remove_neurons

    tm = load(family_dir(family))
    model = tm.model
    arch = arch_for(model)
    layers = list(arch.layers())
    params = count_parameters(model)
    head_layers, heads = [0], [1]  # uneven heads per layer: the config records them (pruned_heads)
    with torch.no_grad():  # zero what will be removed: those heads and neurons 0, 5 of every layer
        for i in head_layers:
            w, d = arch.unit_output_columns(layers[i])
            for h in heads:
                w[:, h * d : (h + 1) * d] = 0
        for layer in layers:
            arch.ffn_output_weight(layer)[:, [0, 5]] = 0
    reference = torch_out(tm, TRAIN)

    if supports(model.config, "prune.heads"):
        params -= sum(len(heads) * arch.unit_params(layers[i]) for i in head_layers)
        remove_heads(model, {i: heads for i in head_layers})
        assert [arch.attention_units(layer) for layer in arch.layers()] == [
            3 if i in head_layers else 4 for i in range(len(layers))]
    else:
        with pytest.raises(UnsupportedArchitectureError, match=rf"prune heads.*{family}"):
            remove_heads(model, {0: [1]})
    assert count_parameters(model) == params
    per_neuron = arch.neuron_params(layers[0])
    remove_neurons(model, {i: [0, 5] for i in range(len(layers))})
    params -= 2 * len(layers) * per_neuron
    assert count_parameters(model) == params
    np.testing.assert_allclose(torch_out(tm, TRAIN), reference, atol=1e-5)

    if supports(model.config, "prune.layers"):
        dropped = arch.layer_params(arch.layers()[1])
        remove_layers(model, [1])
        assert count_parameters(model) == params - dropped and model.config.num_hidden_layers == 2
    else:
        with pytest.raises(UnsupportedArchitectureError, match=rf"prune layers.*{family}"):
            remove_layers(model, [1])
        assert count_parameters(model) == params
    model.save_pretrained(tmp_path / "pruned")
    tm.tokenizer.save_pretrained(tmp_path / "pruned")
    reloaded = load(tmp_path / "pruned")
    np.testing.assert_allclose(torch_out(reloaded, TRAIN), torch_out(tm, TRAIN), atol=1e-6)
    entries = write_artifact(reloaded, tmp_path / "artifact", ("onnx",))
    assert entries[0].metrics["vs_torch"]["max_abs_diff"] <= 1e-4


# --- vocabulary trimming -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_trimming_keeps_ids_and_outputs_on_the_kept_text_and_the_runtime_agrees(
        family: str, family_dir: Callable[..., Path], tmp_path: Path) -> None:
    from edgellm.runtime.text import TextEncoder, plain_tokenizer
    from edgellm.vocab import trim_vocabulary, unknown_tokens

    tm = load(family_dir(family))
    original = plain_tokenizer(tm.tokenizer)
    reference = torch_out(tm, TRAIN)
    result = trim_vocabulary(tm.model, tm.tokenizer, TRAIN)
    assert result.report["tokenizer_model"] == TOKENIZERS[family]
    assert result.report["vocab_size_after"] < result.report["vocab_size_before"]
    trimmed = plain_tokenizer(result.tokenizer)
    for text in TRAIN:  # same tokens, renumbered
        assert [result.keep_ids[i] for i in trimmed.encode(text).ids] == original.encode(text).ids
    np.testing.assert_allclose(torch_out(tm, TRAIN, result.tokenizer), reference, atol=1e-6)
    if TOKENIZERS[family] != "WordPiece":  # character / byte fallback: nothing known becomes unknown
        assert unknown_tokens(result.tokenizer, TEST)["unknown"] == unknown_tokens(original, TEST)["unknown"]

    tm.tokenizer = result.tokenizer
    art = tmp_path / "artifact"
    write_artifact(tm, art, ("onnx",))
    runtime = TextEncoder(art / "tokenizer.json", max_length=MAX_LENGTH)
    for text in TRAIN + TEST:  # the runtime reads the trimmed tokenizer.json as transformers does
        (ids,) = runtime.encode([text])["input_ids"]
        assert ids.tolist() == result.tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    for text in TRAIN + [SEEN_WORDS]:  # the texts trimmed on, and a new sentence of their words
        (ids,) = runtime.encode([text])["input_ids"]
        assert [result.keep_ids[i] for i in ids] == tm_ids(original, text)


def tm_ids(tokenizer: Any, text: str) -> list[int]:
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    return tokenizer.encode(text).ids


@pytest.mark.parametrize("family", [f for f in SUBWORD if TOKENIZERS[f] == "BPE"])
def test_bpe_trimming_keeps_merges_consistent(family: str, family_dir: Callable[..., Path]) -> None:
    from edgellm.runtime.text import plain_tokenizer
    from edgellm.vocab import trim_vocabulary

    tm = load(family_dir(family))
    before = json.loads(plain_tokenizer(tm.tokenizer).to_str())["model"]
    result = trim_vocabulary(tm.model, tm.tokenizer, TRAIN[:2])
    after = json.loads(plain_tokenizer(result.tokenizer).to_str())["model"]
    vocab = after["vocab"]
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in after["merges"]]
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in pairs)  # no merge makes a dropped token
    old = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in before["merges"]]
    assert pairs == [p for p in old if p in set(pairs)]  # kept merges keep their order (ranks)
    dropped = [p for p in old if p not in set(pairs)]
    assert dropped and all(not (a in vocab and b in vocab and a + b in vocab) for a, b in dropped)
    assert all(chr(c) in vocab for c in range(ord("!"), ord("~") + 1))  # the byte alphabet stays
    # the pieces a kept merge produces still tokenize as before: each kept token encodes to itself
    trimmed = plain_tokenizer(result.tokenizer)
    original = plain_tokenizer(tm.tokenizer)
    for word in ("the film was great", "a boring plot"):
        assert [result.keep_ids[i] for i in trimmed.encode(word).ids] == original.encode(word).ids


# --- the whole pipeline -----------------------------------------------------------------------------------------

SMOKE = Path(__file__).resolve().parent.parent / "export" / "smoke.yaml"
PIPELINE_CASES = {  # family -> recipe changes: what the family refuses is left out of its recipe
    "xlm-roberta": [],  # Unigram trimming, every stage, ONNX Runtime and OpenVINO INT8
    "modernbert": ["prune.heads=0", "export.formats=[onnx]", "quantize.backends=[onnxruntime]"],
}


@pytest.mark.parametrize("family", list(PIPELINE_CASES))
def test_compress_runs_the_smoke_recipe_on_the_family(family: str, tmp_path: Path) -> None:
    import edgellm
    from edgellm.pipeline import compress
    from edgellm.recipe import load_recipe

    teacher = build_family(family, tmp_path / "teacher", task="feature-extraction")
    recipe = load_recipe(SMOKE, [f"teacher={teacher}", "data.max_rows=200", "evaluate.repeat=3",
                                 *PIPELINE_CASES[family]])
    manifest = compress(recipe, tmp_path / "out", progress=False).manifest
    stages = ["teacher", "distill", "prune", "vocab"] if recipe.distill else ["teacher", "prune", "vocab"]
    assert list(manifest.metrics)[: len(stages)] == stages
    vocab = manifest.metrics["vocab"]["report"]
    assert vocab["tokenizer_model"] == TOKENIZERS[family] and vocab["vocab_size_after"] < vocab["vocab_size_before"]
    assert manifest.source["model_type"] == family
    trimmed_torch = manifest.metrics["vocab"]["test"]["accuracy"]
    for entry in manifest.models:
        if entry.precision == "fp32":  # the export equals the trimmed torch model, here on the test split too
            assert entry.metrics["test"]["accuracy"] == trimmed_torch
    int8 = manifest.metrics["quantize"]["models"]
    assert [m for m in int8] and all(m.endswith("int8") for m in int8)
    assert manifest.default_model == "onnx-int8"
    scores = edgellm.load(str(tmp_path / "out")).scores(["the film was great", "an awful plot"])
    assert scores.shape == (2, 2) and np.allclose(scores.sum(1), 1.0, atol=1e-5)


# --- refusals ----------------------------------------------------------------------------------------------------

def test_modernbert_pruning_of_heads_is_refused_by_the_prune_stage_before_loading(
        family_dir: Callable[..., Path], tmp_path: Path) -> None:
    from edgellm.prune import prune
    from edgellm.recipe import PruneConfig

    with pytest.raises(UnsupportedArchitectureError, match=r"prune heads \(prune.heads\) cannot handle "
                                                           r"ModernBertForSequenceClassification"):
        prune(family_dir("modernbert"), tmp_path / "out", config=PruneConfig(heads=0.25), data=None,
              task="text-classification")
    assert not (tmp_path / "out").exists()


def test_the_pipeline_refuses_a_recipe_stage_the_teacher_cannot_go_through_before_reading_data(
        family_dir: Callable[..., Path], tmp_path: Path) -> None:
    from edgellm.pipeline import compress
    from edgellm.recipe import DataConfig, PruneConfig, Recipe

    recipe = Recipe(teacher=str(family_dir("modernbert")), task="text-classification",
                    data=DataConfig(path=str(tmp_path / "missing.csv")), prune=PruneConfig(layers=0.3))
    with pytest.raises(UnsupportedArchitectureError, match=r"prune layers \(prune.layers\) cannot handle "
                                                           r"ModernBert.*position"):
        compress(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out.work").exists()


# --- the compatibility table -------------------------------------------------------------------------------------

def test_the_compatibility_doc_holds_the_registry_table() -> None:
    text = COMPAT_DOC.read_text()
    assert compatibility_markdown() in text, "docs/compatibility.md is stale: run python docs/gen_compatibility.py"
    for family in FAMILIES.values():
        assert f"`{family.model_type}`" in text
