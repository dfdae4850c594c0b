"""Device choice: which device a model runs on, why, and what was passed over.

`device="auto"` walks the device chain of the profile the model was built for (targets/NAME.yaml, copied into the
artifact at export) and takes the first device that really starts; a generic model's chain is the CPU alone. Each
device passed over is logged with its reason, and `strict=True` refuses to pass over the first one. A named device
(`device="gpu"`) is a demand: it runs there or raises UnsupportedTargetError listing the available devices.

    runner = open_backend(folder, manifest, entry, device="auto")
    runner.selection    # {'device': 'cpu', 'fallback': True, 'passed_over': {'npu': "... not available ..."}, ...}
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgellm.artifact import Manifest, ModelEntry
from edgellm.errors import BackendError, ConfigError, UnsupportedTargetError
from edgellm.runtime.base import Backend
from edgellm.targets import TargetProfile, load_target, machine_arch, profile_file_name

__all__ = ["DeviceChoice", "available_devices", "entry_profile", "best_target", "device_chain", "open_backend",
           "GENERIC_CHAIN"]

log = logging.getLogger(__name__)

GENERIC_CHAIN = ["cpu"]  # a model built for no target was built and checked for the CPU


@dataclass
class DeviceChoice:
    """What `load` picked and why; `EdgeModel.describe()["selection"]`."""

    backend: str  # onnxruntime or openvino
    requested: str  # "auto" or the device asked for
    device: str  # the edgellm device picked: cpu, cuda, gpu, npu, qnn ...
    chain: list[str]  # devices considered, best first
    target: str | None = None  # profile the model was built for
    fallback: bool = False  # True when a device ahead of `device` in the chain was passed over
    passed_over: dict[str, str] = field(default_factory=dict)  # device -> why it was not used
    reason: str = ""  # one sentence for logs and describe()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_devices() -> dict[str, list[str]]:
    """Devices each backend can use on this machine, e.g. {'onnxruntime': ['cpu'], 'openvino': ['cpu']}."""
    from edgellm.runtime.openvino import openvino_devices
    from edgellm.runtime.ort import ort_devices

    return {"onnxruntime": ort_devices(), "openvino": openvino_devices()}


def entry_profile(folder: Path, manifest: Manifest, entry: ModelEntry) -> TargetProfile | None:
    """The profile `entry` was built for: the copy inside the artifact, else targets/NAME.yaml, else None."""
    if not entry.target:
        return None
    rel = profile_file_name(entry.target)
    try:
        if rel in manifest.files:
            return load_target(folder / rel)
        return load_target(entry.target)
    except (ConfigError, UnsupportedTargetError) as exc:
        log.warning("model %s was built for target %r, whose profile cannot be read (%s); using the CPU chain",
                    entry.name, entry.target, exc)
        return None


def best_target(folder: Path, manifest: Manifest, backend: str = "auto") -> str | None:
    """`target="auto"`: the target whose model suits this machine best, or None (use the default model).

    A target qualifies when its first device is available here and, for CPU profiles, the architecture matches;
    accelerators rank before CPUs, then manifest order (the order of --target at export).
    """
    available = available_devices()
    arch = machine_arch()
    ranked: list[tuple[bool, int, str]] = []
    for index, entry in enumerate(manifest.models):
        if not entry.target or backend not in ("auto", entry.backend):
            continue
        profile = entry_profile(folder, manifest, entry)
        if profile is None or (profile.arch and profile.arch != arch):
            continue
        if profile.device in available.get(entry.backend, []):
            ranked.append((profile.device == "cpu", index, entry.target))
    if not ranked:
        log.info("target auto: no model of %s is built for a device of this machine (%s, %s); using the default "
                 "model", folder, arch, available)
        return None
    choice = min(ranked)[2]
    log.info("target auto: %s (its first device is available here; candidates %s)", choice, [r[2] for r in ranked])
    return choice


def device_chain(entry: ModelEntry, profile: TargetProfile | None) -> list[str]:
    """Devices `auto` tries for `entry`, best first."""
    if profile is not None and profile.backend == entry.backend:
        return profile.devices
    return list(GENERIC_CHAIN)


def _make_backend(folder: Path, entry: ModelEntry, device: str, threads: int | None,
                  profile: TargetProfile | None) -> Backend:
    options: dict[str, Any] = {}
    if entry.backend == "openvino":
        from edgellm.runtime.openvino import OpenVINOBackend

        options["inference_precision"] = entry.inference_precision or "f32"
        return OpenVINOBackend(folder / entry.path, device=device, threads=threads, options=options)
    from edgellm.runtime.ort import OrtBackend

    if profile is not None and profile.provider_options and device == profile.device:
        options["provider_options"] = dict(profile.provider_options)
    return OrtBackend(folder / entry.path, device=device, threads=threads, options=options)


def open_backend(
    folder: Path,
    manifest: Manifest,
    entry: ModelEntry,
    *,
    device: str = "auto",
    threads: int | None = None,
    strict: bool = False,
) -> Backend:
    """Compile `entry` on `device` ("auto": the best device of its chain that starts); the backend's `selection`
    records the DeviceChoice. See the module doc."""
    profile = entry_profile(folder, manifest, entry)
    if threads is None and profile is not None:
        threads = profile.threads
    target = entry.target
    if device != "auto":  # a demand: the backend raises, naming the available devices, if it cannot
        runner = _make_backend(folder, entry, device, threads, profile)
        runner.selection = DeviceChoice(entry.backend, device, device, [device], target,
                                        reason=f"device {device!r} was asked for").to_dict()
        return runner
    chain = device_chain(entry, profile)
    where = f"target {target}'s chain" if profile is not None else "the generic chain"
    passed: dict[str, str] = {}
    last: UnsupportedTargetError | BackendError | None = None
    for dev in chain:
        try:
            runner = _make_backend(folder, entry, dev, threads, profile)
        except (UnsupportedTargetError, BackendError) as exc:
            if len(chain) == 1:
                raise
            passed[dev] = str(exc)
            last = exc
            if strict:
                raise UnsupportedTargetError(
                    f"strict: model {entry.name!r} needs {dev!r}, the first device of {where} {chain}, and it "
                    f"cannot run there: {exc}. Available devices: {available_devices()}. "
                    "Pass strict=False to fall back, or choose a device."
                ) from exc
            log.info("device %s passed over for %s: %s", dev, entry.name, exc)
            continue
        if passed:
            reason = f"auto: {dev} is the first device of {where} {chain} that runs here; passed over " + "; ".join(
                f"{d} ({why})" for d, why in passed.items())
            log.warning("%s runs on %s, not %s: %s", entry.name, dev, chain[0], reason)
        else:
            reason = f"auto: {dev} is the first device of {where} {chain}"
            log.info("%s runs on %s: %s", entry.name, dev, reason)
        choice = DeviceChoice(entry.backend, "auto", dev, chain, target, bool(passed), passed, reason)
        runner.selection = choice.to_dict()
        return runner
    # the last device's error class says what kind of failure it was (absent device, or a model that will not load)
    raise type(last)(
        f"model {entry.name!r} runs on none of {where} {chain}: "
        + "; ".join(f"{d}: {why}" for d, why in passed.items())
        + f". Available devices: {available_devices()}"
    ) from last
