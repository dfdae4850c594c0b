"""Device profiles (targets/*.yaml) and export per target: static shapes, FP16, one model per target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgellm.artifact import read_manifest
from edgellm.cli import cli
from edgellm.errors import ConfigError, UnsupportedTargetError
from edgellm.exporting import export
from edgellm.exporting.target import target_static_shape
from edgellm.runtime import load
from edgellm.targets import list_targets, load_target, target_from_dict

# name -> (backend, device chain, precision, static shape, INT8 preset and mode, threads, arch)
EXPECTED = {
    "cpu-x86-avx512": ("onnxruntime", ["cpu"], "fp32", None, ("avx512-vnni", "dynamic"), None, "x86_64"),
    "cpu-x86-amx": ("openvino", ["cpu"], "fp32", None, ("avx512-vnni", "static"), None, "x86_64"),
    "cpu-x86-avx2": ("onnxruntime", ["cpu"], "fp32", None, ("avx2", "dynamic"), None, "x86_64"),
    "cpu-arm64": ("onnxruntime", ["cpu"], "fp32", None, ("arm64", "dynamic"), 4, "aarch64"),
    "intel-npu": ("openvino", ["npu", "gpu", "cpu"], "fp16", (1, 128), ("intel-npu", "static"), None, None),
    "intel-gpu": ("openvino", ["gpu", "cpu"], "fp16", None, None, None, None),
    "nvidia-small-gpu": ("onnxruntime", ["cuda", "cpu"], "fp16", None, None, None, None),
    "qualcomm-npu": ("onnxruntime", ["qnn", "cpu"], "fp32", (1, 128), ("qnn-htp", "static"), None, None),
}

TEXTS = ["a great film", "", "awful", "the music was good but the acting was awful and the ending too long",
         "boring " * 80, "fun", "i love this movie", "never again"]


def test_every_profile_validates() -> None:
    assert list_targets() == sorted(EXPECTED)
    for name, expected in EXPECTED.items():
        p = load_target(name)
        quant = (p.quantization.preset, p.quantization.mode) if p.quantization else None
        assert (p.backend, p.devices, p.precision, p.static, quant, p.threads, p.arch) == expected, name
        assert p.name == name and p.description
    assert load_target("qualcomm-npu").provider_options == {"backend_type": "htp"}
    assert load_target("intel-npu").inference_precision == "f16"
    assert load_target("cpu-x86-amx").inference_precision == "bf16"


# (change to the intel-npu profile, words of the ConfigError)
BAD_PROFILES = [
    ({"thread": 4}, "unknown key 'thread'; did you mean 'threads'?"),  # a typo'd key
    ({"threads": "four"}, "target.threads must be an integer, not str 'four'"),  # wrong type
    ({"threads": 0}, "target.threads = 0 is outside [1, inf]"),  # out of range
    ({"backend": "tensorrt"}, "target.backend = 'tensorrt' is not one of ['onnxruntime', 'openvino']"),
    ({"device": "tpu"}, "target.device = 'tpu' is not a device of openvino (known: cpu, gpu, npu)"),
    ({"fallback": ["gpu", "cpu", "tpu"]}, "target.fallback[2] = 'tpu' is not a device of openvino"),
    ({"fallback": ["gpu", "npu"]}, "repeats a device of the chain ['npu', 'gpu', 'npu']"),
    ({"static_shape": [128]}, "target.static_shape = [128]: give [batch, sequence]"),
    ({"static_shape": [0, 128]}, "target.static_shape[0] = 0 is outside [1, inf]"),
    ({"static_shape": [1, "long"]}, "target.static_shape[1] must be an integer"),
    ({"precision": "int4"}, "target.precision = 'int4' is not one of ['fp32', 'fp16']"),
    ({"inference_precision": "f8"}, "target.inference_precision = 'f8' is not one of ['f32', 'bf16', 'f16']"),
    ({"quantization": {"preset": "npu", "mode": "weird"}}, "target.quantization.mode = 'weird' is not one of"),
    ({"quantization": {"mode": "static"}}, "target.quantization: missing required key(s) ['preset']"),
    ({"provider_options": {"device_id": "0"}}, "target.provider_options are ONNX Runtime options"),
    ({"arch": "riscv64"}, "target.arch = 'riscv64' is not one of ['x86_64', 'aarch64']"),
    ({"name": "Intel NPU"}, "target.name = 'Intel NPU': use lower-case letters, digits and '-'"),
    ({"device": None}, "target.device must be a string, not NoneType"),
]


@pytest.mark.parametrize("change,words", BAD_PROFILES)
def test_bad_profile_is_a_config_error_naming_the_field(change: dict[str, Any], words: str) -> None:
    data = {**load_target("intel-npu").to_dict(), **change}
    with pytest.raises(ConfigError) as info:
        target_from_dict(data)
    assert words in str(info.value)


def test_onnxruntime_profile_refuses_openvino_options() -> None:
    data = {**load_target("qualcomm-npu").to_dict(), "inference_precision": "f16"}
    with pytest.raises(ConfigError, match="inference_precision is an OpenVINO hint; onnxruntime has none"):
        target_from_dict(data)
    with pytest.raises(ConfigError, match="missing required key"):
        target_from_dict({"name": "x", "backend": "onnxruntime"})
    with pytest.raises(ConfigError, match="must be a mapping of options, not list"):
        target_from_dict(["intel-npu"])


def test_profile_files(tmp_path: Path) -> None:
    good = tmp_path / "my-npu.yaml"
    good.write_text("name: my-npu\nbackend: openvino\ndevice: npu\nstatic_shape: [2, 32]\nfallback: [cpu]\n")
    assert load_target(good).devices == ["npu", "cpu"] and load_target(str(good)).static == (2, 32)
    wrong_name = tmp_path / "other.yaml"
    wrong_name.write_text(good.read_text())
    with pytest.raises(ConfigError, match="other.yaml: name 'my-npu' must equal the file name 'other'"):
        load_target(wrong_name)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_target(bad_yaml)
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: typo\nbackend: onnxruntime\ndevice: cpu\nfalback: []\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'falback'; did you mean 'fallback'\?"):
        load_target(typo)
    with pytest.raises(ConfigError, match="does not exist"):
        load_target(tmp_path / "missing.yaml")


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(UnsupportedTargetError) as info:
        load_target("intel-npo")
    assert "unknown target 'intel-npo'; did you mean 'intel-npu'?" in str(info.value)
    assert "known targets: cpu-arm64, cpu-x86-amx, cpu-x86-avx2, cpu-x86-avx512, intel-gpu" in str(info.value)


def test_environment_folder_adds_and_overrides_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "intel-npu.yaml").write_text("name: intel-npu\nbackend: openvino\ndevice: npu\n")
    (tmp_path / "board-x.yaml").write_text("name: board-x\nbackend: onnxruntime\ndevice: cpu\nthreads: 8\n")
    monkeypatch.setenv("EDGELLM_TARGETS", str(tmp_path))
    assert list_targets() == sorted([*EXPECTED, "board-x"])
    assert load_target("board-x").threads == 8
    assert load_target("intel-npu").devices == ["npu"]  # the first folder wins


def test_static_shape_follows_max_length() -> None:
    npu = load_target("intel-npu")
    assert target_static_shape(npu, 128) == (1, 128)
    assert target_static_shape(npu, 64) == (1, 64)  # no text is longer than 64 tokens: fewer columns
    assert target_static_shape(load_target("intel-gpu"), 64) is None
    with pytest.raises(ConfigError, match="static_shape sequence 128 is shorter than max_length 256"):
        target_static_shape(npu, 256)


def test_one_model_per_target_in_the_artifact(target_artifact: Path) -> None:
    manifest = read_manifest(target_artifact)
    assert [m.name for m in manifest.models] == ["onnx-fp32", "intel-npu", "qualcomm-npu", "nvidia-small-gpu",
                                                 "cpu-arm64"]
    assert manifest.default_model == "onnx-fp32"
    static = {n: [1, 64] for n in ("input_ids", "attention_mask", "token_type_ids")}  # tiny model: max_length 64
    rows = {m.name: (m.target, m.backend, m.precision, m.static_shapes, m.inference_precision, m.files)
            for m in manifest.models[1:]}
    assert rows == {
        "intel-npu": ("intel-npu", "openvino", "fp16", static, "f16",
                      ["intel-npu-openvino_model.xml", "intel-npu-openvino_model.bin", "intel-npu-target.json"]),
        "qualcomm-npu": ("qualcomm-npu", "onnxruntime", "fp32", static, None,
                         ["qualcomm-npu-model.onnx", "qualcomm-npu-target.json"]),
        "nvidia-small-gpu": ("nvidia-small-gpu", "onnxruntime", "fp16", None, None,
                             ["nvidia-small-gpu-model.onnx", "nvidia-small-gpu-target.json"]),
        "cpu-arm64": ("cpu-arm64", "onnxruntime", "fp32", None, None,
                      ["cpu-arm64-model.onnx", "cpu-arm64-target.json"]),
    }
    for entry in manifest.models:
        stats = entry.metrics["vs_torch"]
        assert 0 <= stats["max_abs_diff"] <= stats["tolerance"], entry.name
        assert stats["tolerance"] == (1e-2 if entry.precision == "fp16" else 1e-4)
    assert "model.onnx" not in manifest.models[1].files and not (target_artifact / "intel-npu-model.onnx").exists()
    copy = json.loads((target_artifact / "intel-npu-target.json").read_text())
    assert copy == load_target("intel-npu").to_dict()


def test_static_onnx_has_fixed_shapes_and_fp16_onnx_has_half_weights(target_artifact: Path) -> None:
    static = onnx.load(str(target_artifact / "qualcomm-npu-model.onnx")).graph
    assert {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in static.input} == {
        n: [1, 64] for n in ("input_ids", "attention_mask", "token_type_ids")}
    half = onnx.load(str(target_artifact / "nvidia-small-gpu-model.onnx")).graph
    big = [t for t in half.initializer if np.prod(t.dims) >= 256]  # weight matrices and embedding tables
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert [i.type.tensor_type.elem_type for i in half.input] == [onnx.TensorProto.INT64] * 3  # ids stay int64
    assert half.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # logits stay float32


def test_openvino_npu_ir_is_static_and_fp16(target_artifact: Path, classifier_artifact: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(target_artifact / "intel-npu-openvino_model.xml"))
    assert {p.get_any_name(): p.get_partial_shape().to_shape() for p in model.inputs} == {
        n: ov.Shape([1, 64]) for n in ("input_ids", "attention_mask", "token_type_ids")}
    types = [op.get_output_element_type(0).get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"
             and op.get_output_size() and np.prod(list(op.get_output_shape(0))) >= 256]
    assert types and set(types) == {"f16"}  # every weight matrix stored in FP16
    fp32_bin = (classifier_artifact / "openvino_model.bin").stat().st_size
    assert (target_artifact / "intel-npu-openvino_model.bin").stat().st_size < 0.6 * fp32_bin


@pytest.mark.parametrize("target,atol", [("qualcomm-npu", 1e-5), ("intel-npu", 2e-3), ("nvidia-small-gpu", 2e-3)])
def test_target_model_on_cpu_equals_the_dynamic_model(target_artifact: Path, target: str, atol: float) -> None:
    dynamic = load(target_artifact).scores(TEXTS)
    model = load(target_artifact, target=target)
    assert model.entry.name == target and model.describe()["selection"]["device"] == "cpu"
    np.testing.assert_allclose(model.scores(TEXTS), dynamic, atol=atol)


def test_static_batch_pads_the_last_batch(tiny_encoder_dir: Path, embedder_artifact: Path, tmp_path: Path) -> None:
    """An NPU-style embedder with a fixed batch of 4 and 64 tokens: 6 texts run as 4 + (2 padded to 4)."""
    profile = tmp_path / "npu-batch4.yaml"
    profile.write_text("name: npu-batch4\nbackend: onnxruntime\ndevice: cpu\nstatic_shape: [4, 64]\n")
    out = tmp_path / "art"
    export(tiny_encoder_dir, out, task="feature-extraction", targets=[str(profile)])
    model = load(out, target="npu-batch4")
    assert model.backend.inputs[0].shape == (4, 64)
    texts = TEXTS[:6]
    np.testing.assert_allclose(model.embed(texts), load(embedder_artifact).embed(texts), atol=1e-5)
    np.testing.assert_allclose(model.embed(texts[:1]), load(embedder_artifact).embed(texts[:1]), atol=1e-5)


def test_export_checks_every_target_before_any_work(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedTargetError, match="unknown target 'nope'"):
        export(tiny_classifier_dir, tmp_path / "out", task="text-classification", targets=["intel-npu", "nope"])
    assert not (tmp_path / "out").exists()


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_targets_list_and_show() -> None:
    res = invoke("targets", "list")
    assert res.exit_code == 0
    lines = res.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == sorted(EXPECTED)
    npu = next(line for line in lines if line.startswith("intel-npu"))
    assert npu.split()[:8] == ["intel-npu", "openvino", "npu", ">", "gpu", ">", "cpu", "fp16"]
    assert "int8 intel-npu (static)" in npu and " 1x128 " in npu
    shown = invoke("targets", "show", "qualcomm-npu")
    assert json.loads(shown.output) == load_target("qualcomm-npu").to_dict()
    missing = invoke("targets", "show", "intel-npo")
    assert missing.exit_code == 1
    assert missing.output.startswith("error (UnsupportedTargetError): unknown target 'intel-npo'; did you mean")


def test_int8_sections_name_presets_of_the_quantizer() -> None:
    from edgellm.quantize.presets import PRESETS

    for name in EXPECTED:
        profile = load_target(name)
        profile.check_quantization()
        if profile.quantization:
            preset = PRESETS[profile.quantization.preset]
            assert profile.arch == preset.arch, name  # CPU presets name their architecture, device ones none


# (INT8 section of the intel-npu profile, words of the ConfigError)
BAD_INT8 = [
    ({"preset": "avx512-vni"}, "quantization.preset = 'avx512-vni' is not a preset; did you mean 'avx512-vnni'?"),
    ({"preset": "qnn-htp", "mode": "static"}, "makes INT8 for ['onnxruntime'], not openvino"),
    ({"preset": "intel-npu", "mode": "dynamic"}, "quantization.mode = 'dynamic': preset 'intel-npu' runs ['static'"),
]


@pytest.mark.parametrize("section,words", BAD_INT8)
def test_int8_section_must_fit_the_preset(section: dict[str, Any], words: str, tiny_classifier_dir: Path,
                                          tmp_path: Path) -> None:
    profile = target_from_dict({**load_target("intel-npu").to_dict(), "quantization": section})
    with pytest.raises(ConfigError) as info:
        profile.check_quantization()
    assert words in str(info.value)
    (tmp_path / "bad-npu.yaml").write_text(json.dumps({**profile.to_dict(), "name": "bad-npu"}))
    with pytest.raises(ConfigError, match="quantization"):  # export refuses it before any work
        export(tiny_classifier_dir, tmp_path / "out", task="text-classification",
               targets=[str(tmp_path / "bad-npu.yaml")])
    assert not (tmp_path / "out").exists()
