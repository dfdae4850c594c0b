"""Device choice: auto walks the target's chain, falls back openly, strict refuses, unknown devices are typed errors.

This machine has only a CPU, so GPUs / NPUs are either absent (the real case) or simulated by making ONNX Runtime
report a provider it cannot start (the case of a GPU wheel without a driver).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from edgellm.errors import BackendError, UnsupportedTargetError
from edgellm.runtime import devices, load
from edgellm.runtime.devices import best_target

TEXTS = ["a great film", "awful", ""]


def test_auto_on_cpu_only_picks_cpu_and_reports_the_fallback(target_artifact: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgellm.runtime.devices"):
        npu = load(target_artifact, target="intel-npu")  # device="auto" is the default
    info = npu.describe()
    assert info["device"] == "CPU" and info["backend"] == "openvino"
    sel = info["selection"]
    assert (sel["requested"], sel["device"], sel["chain"], sel["target"], sel["fallback"]) == (
        "auto", "cpu", ["npu", "gpu", "cpu"], "intel-npu", True)
    assert sel["passed_over"] == {
        "npu": "OpenVINO device 'npu' is not available here; available: ['CPU']",
        "gpu": "OpenVINO device 'gpu' is not available here; available: ['CPU']",
    }
    assert sel["reason"].startswith("auto: cpu is the first device of target intel-npu's chain ['npu', 'gpu', 'cpu'] "
                                    "that runs here; passed over npu (")
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith("intel-npu runs on cpu, not npu: auto:")
    assert len(npu.classify(TEXTS)) == 3


def test_auto_on_a_generic_model_is_the_cpu_without_fallback(target_artifact: Path) -> None:
    sel = load(target_artifact).describe()["selection"]
    assert (sel["device"], sel["chain"], sel["target"], sel["fallback"], sel["passed_over"]) == (
        "cpu", ["cpu"], None, False, {})
    assert sel["reason"] == "auto: cpu is the first device of the generic chain ['cpu']"


@pytest.mark.parametrize("target,first,words", [
    ("intel-npu", "npu", "OpenVINO device 'npu' is not available here; available: ['CPU']"),
    ("nvidia-small-gpu", "cuda", "needs one of ['CUDAExecutionProvider'], which this ONNX Runtime lacks"),
    ("qualcomm-npu", "qnn", "needs one of ['QNNExecutionProvider'], which this ONNX Runtime lacks"),
])
def test_strict_raises_instead_of_falling_back(target_artifact: Path, target: str, first: str, words: str) -> None:
    with pytest.raises(UnsupportedTargetError) as info:
        load(target_artifact, target=target, strict=True)
    text = str(info.value)
    assert text.startswith(f"strict: model {target!r} needs {first!r}, the first device of target {target}'s chain")
    assert words in text and "Available devices: {'onnxruntime': ['cpu'], 'openvino': ['cpu']}" in text


def test_strict_is_satisfied_when_the_first_device_runs(target_artifact: Path) -> None:
    sel = load(target_artifact, target="cpu-arm64", strict=True).describe()["selection"]
    assert (sel["device"], sel["fallback"]) == ("cpu", False)


# (load options, words of the UnsupportedTargetError): named devices are demands, never fallen back from
UNKNOWN_DEVICES = [
    (dict(target="qualcomm-npu", device="tpu"), "unknown ONNX Runtime device 'tpu'"),
    (dict(target="qualcomm-npu", device="tpu"), "available here: ['cpu']"),
    (dict(target="qualcomm-npu", device="qnn"), "available devices: ['cpu']"),  # known, absent
    (dict(target="intel-npu", device="tpu"), "OpenVINO device 'tpu' is not available here; available: ['CPU']"),
    (dict(target="intel-npu", device="npu"), "OpenVINO device 'npu' is not available here; available: ['CPU']"),
    (dict(target="intel-gpu"), "no model built for target 'intel-gpu'; it was built for ['cpu-arm64', 'intel-npu', "
                               "'nvidia-small-gpu', 'qualcomm-npu']"),
    (dict(target="intel-npu", backend="onnxruntime"), "has no onnxruntime model built for target 'intel-npu'"),
    (dict(target="intel-npu", model="cpu-arm64"), "no model named 'cpu-arm64' built for target 'intel-npu'"),
]


@pytest.mark.parametrize("options,words", UNKNOWN_DEVICES)
def test_unknown_or_absent_device_is_a_typed_error(target_artifact: Path, options: dict[str, Any], words: str) -> None:
    with pytest.raises(UnsupportedTargetError) as info:
        load(target_artifact, **options)
    assert words in str(info.value)


def test_named_device_runs_there_and_says_so(target_artifact: Path) -> None:
    sel = load(target_artifact, target="intel-npu", device="cpu").describe()["selection"]
    assert (sel["requested"], sel["device"], sel["chain"], sel["fallback"]) == ("cpu", "cpu", ["cpu"], False)
    assert sel["reason"] == "device 'cpu' was asked for"


def test_provider_that_does_not_start_is_passed_over(target_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime lists QNN (as a QNN wheel without the NPU driver would) but silently runs on the CPU: auto must
    see through it, pass the profile's provider options to QNN only, and say what happened."""
    sessions: list[Any] = []
    real = onnxruntime.InferenceSession

    def recording(path: str, sess_options: Any = None, providers: Any = None, **kwargs: Any) -> Any:
        sessions.append(providers)
        return real(path, sess_options=sess_options, providers=providers, **kwargs)

    providers = ["QNNExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    with pytest.warns(UserWarning, match="QNNExecutionProvider"):
        model = load(target_artifact, target="qualcomm-npu")
    assert sessions == [[("QNNExecutionProvider", {"backend_type": "htp"}), "CPUExecutionProvider"],
                        ["CPUExecutionProvider"]]
    sel = model.describe()["selection"]
    assert (sel["device"], sel["fallback"]) == ("cpu", True)
    assert sel["passed_over"]["qnn"].startswith("QNNExecutionProvider is installed but did not start")
    with pytest.warns(UserWarning), pytest.raises(BackendError, match="QNNExecutionProvider is installed but did not"):
        load(target_artifact, target="qualcomm-npu", device="qnn")  # a demand: no fallback


def test_threads_come_from_the_profile_unless_given(target_artifact: Path) -> None:
    assert load(target_artifact, target="cpu-arm64").describe()["threads"] == 4
    assert load(target_artifact, target="cpu-arm64", threads=1).describe()["threads"] == 1
    assert load(target_artifact).describe()["threads"] is None


def test_artifact_carries_its_profiles(target_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime reads the profile copied into the artifact: no targets/ folder needed on the device."""
    monkeypatch.setattr("edgellm.targets.target_dirs", lambda: [])
    sel = load(target_artifact, target="intel-npu").describe()["selection"]
    assert sel["chain"] == ["npu", "gpu", "cpu"]


def test_target_auto_prefers_a_present_accelerator_then_the_cpu_of_this_arch(
        target_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgellm.artifact import read_manifest

    manifest = read_manifest(target_artifact)
    present = {"onnxruntime": ["cpu"], "openvino": ["cpu"]}
    monkeypatch.setattr(devices, "available_devices", lambda: present)
    monkeypatch.setattr(devices, "machine_arch", lambda: "x86_64")
    assert best_target(target_artifact, manifest) is None  # cpu-arm64 is for aarch64; no accelerator here
    monkeypatch.setattr(devices, "machine_arch", lambda: "aarch64")
    assert best_target(target_artifact, manifest) == "cpu-arm64"
    present["onnxruntime"] = ["cpu", "cuda"]
    assert best_target(target_artifact, manifest) == "nvidia-small-gpu"
    present["openvino"] = ["cpu", "npu"]
    assert best_target(target_artifact, manifest) == "intel-npu"  # manifest order among accelerators
    assert best_target(target_artifact, manifest, "onnxruntime") == "nvidia-small-gpu"


def test_target_auto_loads_the_default_model_on_this_machine(target_artifact: Path) -> None:
    from edgellm.targets import machine_arch

    model = load(target_artifact, target="auto")
    assert model.entry.name == ("cpu-arm64" if machine_arch() == "aarch64" else "onnx-fp32")
    np.testing.assert_allclose(model.scores(TEXTS), load(target_artifact).scores(TEXTS), atol=1e-6)


def test_device_choice_is_torch_free(target_artifact: Path) -> None:
    """Profiles are read and devices chosen with torch, transformers and the quantizer blocked from import."""
    import json
    import subprocess
    import sys

    script = (
        "import sys, json\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'optimum', 'nncf', 'onnx') or "
        "name.startswith('edgellm.quantize'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgellm.runtime import load\n"
        "m = load(sys.argv[1], target='intel-npu')\n"
        "print(json.dumps({'sel': m.describe()['selection']['chain'], 'n': len(m.classify(['a great film']))}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(target_artifact)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"sel": ["npu", "gpu", "cpu"], "n": 1}
