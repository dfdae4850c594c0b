"""Device profiles: what a model built for one device looks like, read from targets/NAME.yaml.

A profile names the engine and device, the precision and quantization preset, fixed input shapes where the
device needs them, threads, and the devices to fall back to. Export builds one model per profile
(`edgellm.exporting.target.export_for_target`); the runtime reads the profile back from the artifact to choose
a device (`load(..., device="auto")`).

    profile = load_target("intel-npu")
    profile.devices          # ['npu', 'gpu', 'cpu']: best first
    profile.static_shape     # [1, 128]

Torch-free: the runtime imports this module.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgellm.config import check_range, from_dict, suggest, to_dict
from edgellm.errors import ConfigError, UnsupportedTargetError

__all__ = [
    "TargetProfile",
    "TargetQuantization",
    "target_dirs",
    "list_targets",
    "all_targets",
    "load_target",
    "target_file",
    "target_from_dict",
    "profile_file_name",
    "known_devices",
    "machine_arch",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# OpenVINO INFERENCE_PRECISION_HINT values a profile may ask for
_OV_PRECISIONS = ("f32", "bf16", "f16")


def known_devices(backend: str) -> tuple[str, ...]:
    """edgellm device names a backend understands (whether or not this machine has them)."""
    if backend == "onnxruntime":
        from edgellm.runtime.ort import PROVIDERS

        return tuple(PROVIDERS)
    from edgellm.runtime.openvino import DEVICES

    return tuple(DEVICES)


@dataclass
class TargetQuantization:
    """INT8 for this target, applied by the quantize stage (`edgellm compress`) to the exported model."""

    preset: str  # CPU-family / device preset key of edgellm.quantize (avx512-vnni, avx2, arm64, ...)
    mode: Literal["dynamic", "static", "weight-only"] = "dynamic"  # static = calibrated on the task's data


@dataclass
class TargetProfile:
    """One device profile (targets/NAME.yaml). Defaults here are the generic-CPU case."""

    name: str  # profile name; equals the file name without .yaml
    backend: Literal["onnxruntime", "openvino"]  # inference engine the model is built for
    device: str  # edgellm device name on that backend: cpu, cuda, qnn (ONNX Runtime); cpu, gpu, npu (OpenVINO)
    description: str = ""  # one line shown by `edgellm targets list`
    arch: Literal["x86_64", "aarch64"] | None = None  # CPU architecture the model is tuned for; null = any
    precision: Literal["fp32", "fp16"] = "fp32"  # float precision of the exported weights (IR / ONNX)
    quantization: TargetQuantization | None = None  # INT8 step for this target; null = stays float
    inference_precision: str | None = None  # OpenVINO INFERENCE_PRECISION_HINT: f32, bf16, f16
    static_shape: list[int] | None = None  # [batch, sequence] fixed input shape (NPUs); null = dynamic
    threads: int | None = None  # inference threads (null = the engine's default: all cores)
    fallback: list[str] = field(default_factory=list)  # devices to try next, in order, with the same model
    provider_options: dict[str, str] = field(default_factory=dict)  # ONNX Runtime execution-provider options
    latency_table: str | None = None  # edgellm fit: latency / size table timed on this device (a fit's latency-table.json), relative to the profile file; used where the device is not present

    def validate(self, where: str) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"{where}.name = {self.name!r}: use lower-case letters, digits and '-'")
        known = known_devices(self.backend)
        for key, dev in [("device", self.device), *((f"fallback[{i}]", d) for i, d in enumerate(self.fallback))]:
            if dev not in known:
                raise ConfigError(
                    f"{where}.{key} = {dev!r} is not a device of {self.backend} (known: {', '.join(known)})"
                )
        if len(set(self.devices)) != len(self.devices):
            raise ConfigError(f"{where}.fallback = {self.fallback} repeats a device of the chain {self.devices}")
        if self.static_shape is not None:
            if len(self.static_shape) != 2:
                raise ConfigError(f"{where}.static_shape = {self.static_shape}: give [batch, sequence]")
            check_range(f"{where}.static_shape[0]", self.static_shape[0], low=1)
            check_range(f"{where}.static_shape[1]", self.static_shape[1], low=2)
        check_range(f"{where}.threads", self.threads, low=1)
        if self.inference_precision is not None:
            if self.backend != "openvino":
                raise ConfigError(f"{where}.inference_precision is an OpenVINO hint; {self.backend} has none")
            if self.inference_precision not in _OV_PRECISIONS:
                raise ConfigError(
                    f"{where}.inference_precision = {self.inference_precision!r} is not one of {list(_OV_PRECISIONS)}"
                )
        if self.provider_options and self.backend != "onnxruntime":
            raise ConfigError(f"{where}.provider_options are ONNX Runtime options; {self.backend} takes none")
        for key, value in self.provider_options.items():
            if not isinstance(value, str):
                raise ConfigError(f"{where}.provider_options.{key} must be a string, not {value!r}")
        if self.latency_table is not None and not self.latency_table.endswith(".json"):
            raise ConfigError(f"{where}.latency_table = {self.latency_table!r}: name a .json file written by "
                              "edgellm fit (OUT/latency-table.json)")

    def check_quantization(self) -> None:
        """The INT8 section against edgellm.quantize's presets (needs the full install; export calls it)."""
        if self.quantization is None:
            return
        from edgellm.quantize.presets import PRESETS

        where, q = f"target {self.name}: quantization", self.quantization
        preset = PRESETS.get(q.preset)
        if preset is None:
            raise ConfigError(f"{where}.preset = {q.preset!r} is not a preset{suggest(q.preset, PRESETS)} "
                              f"(known: {', '.join(PRESETS)})")
        if self.backend not in preset.backends:
            raise ConfigError(
                f"{where}.preset = {q.preset!r} makes INT8 for {list(preset.backends)}, not {self.backend}"
            )
        if q.mode not in preset.modes:
            raise ConfigError(f"{where}.mode = {q.mode!r}: preset {q.preset!r} runs {list(preset.modes)}")

    @property
    def devices(self) -> list[str]:
        """The device chain, best first: `device`, then `fallback`."""
        return [self.device, *self.fallback]

    @property
    def static(self) -> tuple[int, int] | None:
        return (self.static_shape[0], self.static_shape[1]) if self.static_shape else None

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def machine_arch() -> str:
    """This machine's CPU architecture in profile terms (x86_64, aarch64)."""
    import platform

    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def target_from_dict(data: Any, where: str = "target") -> TargetProfile:
    """Build and validate a profile from a mapping (ConfigError naming the field on any problem)."""
    return from_dict(TargetProfile, data, where)


def target_dirs() -> list[Path]:
    """Folders searched for NAME.yaml, first match wins: $EDGELLM_TARGETS (os.pathsep-separated), the source
    checkout's targets/, and share/edgellm/targets under the Python prefix (a wheel install)."""
    dirs = [Path(p) for p in os.environ.get("EDGELLM_TARGETS", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "targets")
    dirs.append(Path(sys.prefix) / "share" / "edgellm" / "targets")
    return [d for d in dirs if d.is_dir()]


def list_targets() -> list[str]:
    """Names of every profile found, sorted."""
    return sorted({p.stem for d in target_dirs() for p in d.glob("*.yaml")})


def all_targets() -> list[TargetProfile]:
    """Every profile found, validated, sorted by name."""
    return [load_target(name) for name in list_targets()]


def target_file(name: str | os.PathLike[str]) -> Path:
    """The file a profile is read from: NAME.yaml in the first of `target_dirs()` holding it, or the path given."""
    text = str(name)
    path = Path(text)
    if not path.suffix:
        found = [d / f"{text}.yaml" for d in target_dirs() if (d / f"{text}.yaml").is_file()]
        if not found:
            names = list_targets()
            raise UnsupportedTargetError(
                f"unknown target {text!r}{suggest(text, names)}; known targets: {', '.join(names) or 'none found'}"
            )
        return found[0]
    if not path.is_file():
        raise ConfigError(f"target profile file {text!r} does not exist")
    return path


def load_target(name: str | os.PathLike[str] | TargetProfile) -> TargetProfile:
    """A profile by name (searched in `target_dirs()`) or by path to a .yaml / .json file; a profile as is."""
    if isinstance(name, TargetProfile):
        return name
    path = target_file(name)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path.name}: not valid JSON: {exc}") from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path.name}: not valid YAML: {exc}") from exc
    profile = target_from_dict(data, where=path.name)
    if path.suffix == ".yaml" and profile.name != path.stem:
        raise ConfigError(f"{path.name}: name {profile.name!r} must equal the file name {path.stem!r}")
    return profile


def profile_file_name(target: str) -> str:
    """The file, inside an artifact, holding the profile a model was built for."""
    return f"{target}-target.json"
