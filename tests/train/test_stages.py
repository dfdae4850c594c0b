"""The trainer's verbs on tiny models: finetune, distill (classification and embeddings), evaluate, save, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from edgellm.data import load_task_data
from edgellm.errors import ConfigError, DataError, ModelError, TrainingError
from edgellm.recipe import DataConfig, DistillConfig, FinetuneConfig
from edgellm.train import TrainedModel, distill, evaluate_model, finetune, load_model

FAST = dict(batch_size=16, eval_every=12, precision="fp32")


@pytest.fixture(scope="module")
def finetuned(tiny_encoder3_dir: Path, tiny_data: Any, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The headless 3-layer encoder fine-tuned into a classifier (36 steps)."""
    return finetune(str(tiny_encoder3_dir), tiny_data, FinetuneConfig(epochs=3, learning_rate=3e-3, **FAST),
                    tmp_path_factory.mktemp("work") / "teacher", progress=False)


@pytest.fixture(scope="module")
def student(finetuned: TrainedModel, tiny_data: Any, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    return distill(finetuned, tiny_data, DistillConfig(layers=[2], epochs=2, learning_rate=3e-3, **FAST),
                   tmp_path_factory.mktemp("work") / "student", progress=False)


def test_finetune_adds_a_head_learns_and_saves_a_folder(finetuned: TrainedModel, tiny_data: Any) -> None:
    assert finetuned.metrics["finetuned"] is True and finetuned.labels == ["negative", "positive"]
    assert finetuned.metrics["train"]["steps"] == 36
    assert finetuned.metrics["validation"]["accuracy"] >= 90.0  # one sentiment word decides the class
    folder = finetuned.folder
    assert folder is not None and (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["architectures"] == [
        "BertForSequenceClassification"]
    reloaded = load_model(str(folder))
    assert reloaded.task == "text-classification" and reloaded.labels == ["negative", "positive"]
    assert evaluate_model(reloaded, tiny_data, split="validation") == finetuned.metrics["validation"]


def test_distilled_student_keeps_the_teachers_accuracy(student: TrainedModel, finetuned: TrainedModel,
                                                       tiny_data: Any) -> None:
    assert student.metrics["teacher_layers"] == [2] and student.metrics["student"]["layers"] == 1
    assert student.metrics["train"]["steps"] == 24 and student.metrics["augment_rows"] == 0
    history = student.metrics["train"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    test = evaluate_model(student, tiny_data, split="test", teacher=finetuned)
    assert test["accuracy"] >= 90.0 and test["agreement_with_teacher"] >= 90.0 and test["examples"] == 24


def test_label_mapping_round_trips_into_the_artifact(student: TrainedModel, tiny_data: Any, tmp_path: Path) -> None:
    """Student folder -> export -> runtime: the manifest's labels and the runtime's answers follow the head."""
    from edgellm.exporting import export
    from edgellm.runtime import load

    folder = student.save(tmp_path / "student")
    assert json.loads((folder / "config.json").read_text())["label2id"] == {"negative": 0, "positive": 1}
    metrics = json.loads((folder / "training_metrics.json").read_text())
    assert metrics["labels"] == ["negative", "positive"] and metrics["train"]["steps"] == 24
    manifest = export(folder, tmp_path / "artifact", task="text-classification", formats=["onnx"], max_length=32)
    assert manifest.labels == ["negative", "positive"]
    texts = tiny_data.test.texts[:8]
    enc = student.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = student.model(**enc).logits.argmax(-1).tolist()
    results = load(tmp_path / "artifact").classify(texts)
    assert [r["label"] for r in results] == [student.labels[i] for i in expected]


def test_head_already_matching_is_used_as_it_is(tiny_bert_factory: Any, tiny_data: Any, tmp_path: Path) -> None:
    """A classifier whose classes are the data's (in another order, other case) is not fine-tuned; the data is
    re-indexed to the head's order."""
    teacher_dir = tiny_bert_factory(task="text-classification", labels=("POSITIVE", "NEGATIVE"), seed=3)
    tm = finetune(str(teacher_dir), tiny_data, FinetuneConfig(**FAST), tmp_path / "teacher", progress=False)
    assert tm.metrics["finetuned"] is False and tm.labels == ["positive", "negative"]
    assert not (tmp_path / "teacher").exists()
    st = distill(tm, tiny_data, DistillConfig(num_layers=1, epochs=1, max_grad_norm=1.0, **FAST), tmp_path / "s",
                 progress=False)
    assert st.labels == ["positive", "negative"] and st.model.config.id2label == {0: "positive", 1: "negative"}
    enc = tm.tokenizer(tiny_data.validation.texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = tm.model(**enc).logits.argmax(-1)
    gold = torch.tensor([1 - y for y in tiny_data.validation.labels])  # data: negative=0; head: positive=0
    expected = float((pred == gold).double().mean() * 100)
    assert tm.metrics["validation"]["accuracy"] == pytest.approx(expected)


def test_extra_losses_augmentation_and_a_given_student(finetuned: TrainedModel, tiny_data: Any,
                                                       tmp_path: Path) -> None:
    """Hidden-state MSE + attention KL, unlabelled augmentation text (minus the data's own sentences), and a
    student module given from outside (as pruning recovery does)."""
    from edgellm.train import build_student

    extra = tmp_path / "extra.txt"
    extra.write_text("\n".join(["a great film", "an awful plot", tiny_data.test.texts[0], tiny_data.train.texts[0],
                                "a great film"]) + "\n")
    given = build_student(finetuned.model, DistillConfig(layers=[0, 2], ffn_size=16))
    config = DistillConfig(epochs=1, learning_rate=3e-3, alpha_hidden=1.0, alpha_attention=1.0,
                           augment_with=[str(extra)], **FAST)
    st = distill(finetuned, tiny_data, config, tmp_path / "s", student=given, progress=False)
    assert st.model is given and st.metrics["augment_rows"] == 2  # test / train sentences and repeats left out
    assert st.metrics["student"]["intermediate_size"] == 16 and st.metrics["train"]["steps"] == 13  # 194 rows / 16


def test_embedding_student_learns_the_teachers_vectors(tiny_encoder3_dir: Path, tmp_path: Path,
                                                      sentiment_jsonl: Path) -> None:
    from edgellm.models import sentence_embedding_config
    from edgellm.train import build_student

    data = load_task_data(DataConfig(path=str(sentiment_jsonl), max_length=32), task="feature-extraction")
    teacher = load_model(str(tiny_encoder3_dir))
    assert teacher.task == "feature-extraction" and teacher.embedding["pooling"] == "mean"
    given = build_student(teacher.model, DistillConfig(layers=[0]))
    torch.manual_seed(7)
    with torch.no_grad():  # scramble the copied layer so that the student starts far from the teacher
        for p in given.encoder.layer.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=0.3)
    untrained = TrainedModel(model=given, tokenizer=teacher.tokenizer, task="feature-extraction",
                             embedding=teacher.embedding)
    before = evaluate_model(untrained, data, split="test", teacher=teacher)
    st = distill(teacher, data, DistillConfig(layers=[0], epochs=3, learning_rate=3e-3, **FAST), tmp_path / "s",
                 student=given, progress=False)
    after = evaluate_model(st, data, split="test", teacher=teacher)
    assert after["pairs"] == 276  # 24 test sentences -> all 276 pairs
    assert before["mean_cosine_to_reference"] < 0.5 < 0.8 < after["mean_cosine_to_reference"]
    history = st.metrics["train"]["history"]
    assert [h["step"] for h in history] == [12, 24, 36] and all("spearman" in h for h in history)
    assert st.metrics["train"]["best"]["spearman"] == max(h["spearman"] for h in history)
    folder = st.save(tmp_path / "embedder")
    assert sentence_embedding_config(folder)["pooling"] == "mean" and (folder / "modules.json").is_file()
    assert load_model(str(folder)).task == "feature-extraction"


# Bad inputs: each a typed error naming the field and the value.
def test_teacher_that_is_not_a_model(tmp_path: Path, tiny_data: Any) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not a model")
    with pytest.raises(ModelError, match=r"teacher = '.*notes' is not a usable model: .*has no config\.json"):
        finetune(str(notes), tiny_data, FinetuneConfig(), tmp_path / "w")
    with pytest.raises(ModelError, match=r"teacher = '.*missing' is not a usable model: .* does not exist"):
        distill(str(tmp_path / "missing"), tiny_data, DistillConfig(), tmp_path / "w")


def test_labels_unknown_to_an_existing_head(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"the film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20)))
    data = load_task_data(DataConfig(path=str(path)))
    with pytest.raises(DataError, match=r"labels \['neg', 'pos'\] in the data are unknown to the classification "
                                        r"head of teacher '.*' \(its classes: \['negative', 'positive'\]\)"):
        finetune(str(tiny_teacher_dir), data, FinetuneConfig(), tmp_path / "w")


def test_headless_teacher_with_finetuning_off(tiny_encoder3_dir: Path, tiny_data: Any, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"teacher = '.*' has no classification head, and finetune\.enabled "
                                            r"is false"):
        finetune(str(tiny_encoder3_dir), tiny_data, FinetuneConfig(enabled=False), tmp_path / "w")


def test_student_layers_out_of_range_in_distill(finetuned: TrainedModel, tiny_data: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"distill\.layers = \[0, 5\]: \[5\] out of range for a teacher with 3"):
        distill(finetuned, tiny_data, DistillConfig(layers=[0, 5]), tmp_path / "w")


def test_cli_distill_end_to_end_and_errors(tiny_encoder3_dir: Path, sentiment_jsonl: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgellm.cli import cli

    out = tmp_path / "student"
    args = ["distill", str(tiny_encoder3_dir), "-o", str(out), "--data-path", str(sentiment_jsonl), "--layers", "2",
            "--epochs", "1", "--teacher-epochs", "1", "--max-length", "32", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "student  1 layers" in result.output and f"wrote {out}" in result.output
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["data"]["split"]["sizes"] == {"train": 192, "validation": 24, "test": 24}
    assert metrics["teacher"]["finetuned"] is True and metrics["student"]["teacher_layers"] == [2]
    assert (tmp_path / "student.work" / "teacher" / "model" / "model.safetensors").is_file()
    again = CliRunner().invoke(cli, args)  # output exists
    assert again.exit_code == 1 and again.output.strip().startswith("error (OutputExistsError): output ")
    bad = CliRunner().invoke(cli, args[:-1] + ["--overwrite", "--layers", "0,9"])
    assert bad.exit_code == 1 and "distill.layers = [0, 9]: [9] out of range" in bad.output
