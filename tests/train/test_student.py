"""Students built from teacher layers: exact copies of the chosen layers, FFN narrowed by importance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgellm.errors import ConfigError, ModelError
from edgellm.recipe import DistillConfig
from edgellm.train.student import build_student, evenly_spaced


@pytest.fixture
def teacher(tiny_teacher_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()


def _layer(model: torch.nn.Module, i: int) -> dict[str, torch.Tensor]:
    return {k.split(f"layer.{i}.", 1)[1]: v for k, v in model.state_dict().items() if f"encoder.layer.{i}." in k}


def test_student_layers_equal_the_chosen_teacher_layers(teacher: torch.nn.Module) -> None:
    student = build_student(teacher, DistillConfig(layers=[2, 0]))  # order given does not matter: sorted
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    assert student.config.edgellm_student == {"teacher_layers": [0, 2], "teacher_num_layers": 3, "ffn_size": 64}
    for s_idx, t_idx in enumerate([0, 2]):
        s_layer, t_layer = _layer(student, s_idx), _layer(teacher, t_idx)
        assert s_layer.keys() == t_layer.keys() and len(s_layer) == 16
        for name in s_layer:
            assert torch.equal(s_layer[name], t_layer[name]), name
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    shared = [k for k in s_sd if "encoder.layer." not in k]
    assert any("embeddings" in k for k in shared) and "classifier.weight" in shared
    for name in shared:
        assert torch.equal(s_sd[name], t_sd[name]), name
    # A copy, not a view: training the student leaves the teacher untouched.
    with torch.no_grad():
        student.bert.encoder.layer[0].attention.self.query.weight.add_(1.0)
    assert not torch.equal(student.bert.encoder.layer[0].attention.self.query.weight,
                           teacher.bert.encoder.layer[0].attention.self.query.weight)


def test_all_layers_reproduce_the_teacher_exactly(teacher: torch.nn.Module) -> None:
    student = build_student(teacher, DistillConfig(num_layers=3))
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 21, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert torch.equal(student(input_ids=ids, attention_mask=mask).logits,
                           teacher(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("count, total, expected", [(3, 6, [1, 3, 5]), (2, 6, [2, 5]), (1, 6, [5]),
                                                    (6, 6, [0, 1, 2, 3, 4, 5]), (2, 3, [1, 2]), (4, 12, [2, 5, 8, 11])])
def test_evenly_spaced_layers_end_with_the_top_one(count: int, total: int, expected: list[int]) -> None:
    assert evenly_spaced(count, total) == expected


def test_narrow_ffn_keeps_the_most_important_neurons(teacher: torch.nn.Module) -> None:
    student = build_student(teacher, DistillConfig(layers=[0, 1, 2], ffn_size=16))
    assert student.config.intermediate_size == 16
    for i in range(3):
        t_in, t_out = teacher.bert.encoder.layer[i].intermediate.dense, teacher.bert.encoder.layer[i].output.dense
        score = t_in.weight.norm(dim=1).double() * t_out.weight.norm(dim=0).double()
        keep = sorted(torch.topk(score, 16).indices.tolist())
        s_in, s_out = student.bert.encoder.layer[i].intermediate.dense, student.bert.encoder.layer[i].output.dense
        assert torch.equal(s_in.weight, t_in.weight[keep]) and torch.equal(s_in.bias, t_in.bias[keep])
        assert torch.equal(s_out.weight, t_out.weight[:, keep]) and torch.equal(s_out.bias, t_out.bias)
    # Functionally: the student equals the teacher with the other neurons' output weights zeroed.
    zeroed = type(teacher)(teacher.config).eval()
    zeroed.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for i in range(3):
            t_in = teacher.bert.encoder.layer[i].intermediate.dense
            t_out = teacher.bert.encoder.layer[i].output.dense
            score = t_in.weight.norm(dim=1).double() * t_out.weight.norm(dim=0).double()
            drop = sorted(set(range(64)) - set(torch.topk(score, 16).indices.tolist()))
            zeroed.bert.encoder.layer[i].output.dense.weight[:, drop] = 0.0
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, zeroed(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_build_student_of_a_llama_style_decoder() -> None:
    """Generic over architectures: Llama blocks sit in model.layers, the FFN is gate/up -> down."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    teacher = LlamaForCausalLM(cfg).eval()
    student = build_student(teacher, DistillConfig(layers=[1, 3], ffn_size=24))
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 24
    mlp_t, mlp_s = teacher.model.layers[3].mlp, student.model.layers[1].mlp
    score = (mlp_t.gate_proj.weight.norm(dim=1).double() * mlp_t.up_proj.weight.norm(dim=1).double()
             * mlp_t.down_proj.weight.norm(dim=0).double())
    keep = sorted(torch.topk(score, 24).indices.tolist())
    assert torch.equal(mlp_s.gate_proj.weight, mlp_t.gate_proj.weight[keep])
    assert torch.equal(mlp_s.down_proj.weight, mlp_t.down_proj.weight[:, keep])
    assert torch.equal(student.model.layers[0].self_attn.q_proj.weight, teacher.model.layers[1].self_attn.q_proj.weight)
    assert student(input_ids=torch.tensor([[1, 5, 9]])).logits.shape == (1, 3, 64)


@pytest.mark.parametrize("config, message", [
    (DistillConfig(layers=[0, 3]), r"distill\.layers = \[0, 3\]: \[3\] out of range for a teacher with 3 layers "
                                   r"\(valid indices 0\.\.2\)"),
    (DistillConfig(layers=[-1, 1]), r"distill\.layers = \[-1, 1\]: \[-1\] out of range"),
    (DistillConfig(layers=None, num_layers=4), r"distill\.num_layers = 4 is out of range for a teacher with 3 "
                                               r"layers \(valid 1\.\.3\)"),
    (DistillConfig(num_layers=2, ffn_size=65), r"distill\.ffn_size = 65 is out of range: the teacher's FFN has 64"),
])
def test_student_layers_out_of_range(teacher: torch.nn.Module, config: DistillConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_student(teacher, config)


def test_distill_config_rejects_repeated_layers() -> None:
    from edgellm.config import from_dict

    with pytest.raises(ConfigError, match=r"distill\.layers = \[1, 1\] must be a non-empty list of distinct"):
        from_dict(DistillConfig, {"layers": [1, 1]}, "distill")


def test_build_student_of_a_model_without_layer_list() -> None:
    class NotATransformer(torch.nn.Module):
        config = type("C", (), {"num_hidden_layers": 2})()

    with pytest.raises(ModelError, match="cannot find its list of 2 transformer blocks"):
        build_student(NotATransformer(), DistillConfig(num_layers=1))


def test_student_from_a_model_folder_equals_the_student_from_the_loaded_model(tiny_teacher_dir: Path,
                                                                              teacher: torch.nn.Module) -> None:
    """build_student also takes a folder (or alias): it is loaded with edgellm.train.model.load_model."""
    from_folder = build_student(str(tiny_teacher_dir), DistillConfig(layers=[1]))
    from_model = build_student(teacher, DistillConfig(layers=[1]))
    a, b = from_folder.state_dict(), from_model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
