"""Machine facts recorded with every result: CPU model and INT8-relevant flags, cores, memory, load, versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "parse_cpuinfo", "package_version", "physical_cores", "parse_proc_stat",
           "live_descendants_cpu_s", "CpuMonitor"]

_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "asimd", "asimddp")
_VERSIONS = ("numpy", "onnxruntime", "openvino", "tokenizers", "torch", "transformers", "optimum", "optimum-onnx",
             "nncf", "matplotlib")


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """CPU model name and the INT8-relevant flags from /proc/cpuinfo text (x86 `model name` / `flags`, Arm
    `Hardware` or `Model` / `Features`); ("", []) when it names neither."""
    model = ""
    flags: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if not model and key in ("model name", "Hardware", "Model", "cpu model") and value.strip():
            model = value.strip()
        if not flags and key in ("flags", "Features"):
            present = set(value.split())
            flags = [f for f in _CPU_FLAGS if f in present]
    return model, flags


def _cpu_model_fallback() -> str:
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def _virtual_memory(field: str) -> int | None:
    """A field of psutil's `virtual_memory()` in bytes ("total", "available"), or None without psutil."""
    try:
        import psutil

        return int(getattr(psutil.virtual_memory(), field))
    except ImportError:
        return None


def _memory_bytes() -> int | None:
    return _virtual_memory("total")


def available_memory_bytes() -> int | None:
    """Memory the system can give new allocations without swapping (psutil's `available`), or None."""
    return _virtual_memory("available")


def package_version(name: str) -> str:
    """The installed version of a distribution, or "?"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def machine_info() -> dict[str, Any]:
    """CPU model, flags that matter for INT8 (VNNI, AVX-512, AVX2, AMX, NEON), cores, memory, load, versions."""
    model, flags = "", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model, flags = parse_cpuinfo(handle.read())
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": model or _cpu_model_fallback(),
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "physical_cores": physical_cores(),
        "memory_bytes": _memory_bytes(),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in _VERSIONS:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    info["versions"] = versions
    return info




def live_descendants_cpu_s(proc: Path, pid: int) -> float:
    """CPU seconds (user + system, with those of their own waited-for children) of the processes below `pid` that
    have not been waited for: /proc/PID/stat of every process, parents followed. Processes that end while this reads
    are skipped."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    tick = float(os.sysconf("SC_CLK_TCK"))
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ... (comm may hold spaces)
        if len(fields) < 15:
            continue
        parents[int(entry.name)] = int(fields[1])
        seconds[int(entry.name)] = sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    below, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return sum(seconds[p] for p in below)


def parse_proc_stat(text: str) -> dict[str, int] | None:
    """Machine-wide CPU time in clock ticks from /proc/stat's first line: busy (user, nice, system, irq, softirq),
    idle (idle, iowait), steal (taken by the hypervisor). None when the text has no `cpu` line."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            ticks = [int(x) for x in parts[1:]] + [0] * 8
            user, nice, system, idle, iowait, irq, softirq, steal = ticks[:8]
            return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal}
    return None


class CpuMonitor:
    """How busy the machine was with other work while a measurement ran (Linux): the average number of cores used
    by other processes (machine-wide busy time minus this process's and its descendants', live ones included: a
    peer engine serving from its own process is this run's work), and the cores' worth of time the hypervisor
    stole. `result` is {} where /proc/stat is absent.

        with CpuMonitor() as monitor:
            measure()
        monitor.result  # {"other_cores": 0.02, "steal_cores": 0.0, "wall_s": 41.3}
    """

    def __init__(self) -> None:
        self.result: dict[str, float] = {}
        self._start: tuple[dict[str, int], float, float] | None = None

    @staticmethod
    def _snapshot() -> tuple[dict[str, int], float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                stat = parse_proc_stat(handle.read())
            import resource
        except (OSError, ImportError):
            return None
        if stat is None:
            return None
        own = live_descendants_cpu_s(Path("/proc"), os.getpid())
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # children: those already waited for
            usage = resource.getrusage(who)
            own += usage.ru_utime + usage.ru_stime
        return stat, own, time.perf_counter()

    def __enter__(self) -> CpuMonitor:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._snapshot()
        if self._start is None or end is None:
            return
        (s0, own0, t0), (s1, own1, t1) = self._start, end
        tick = float(os.sysconf("SC_CLK_TCK"))
        wall = max(t1 - t0, 1e-9)
        busy = (s1["busy"] - s0["busy"]) / tick
        self.result = {
            "other_cores": round(max(busy - (own1 - own0), 0.0) / wall, 3),
            "steal_cores": round((s1["steal"] - s0["steal"]) / tick / wall, 3),
            "wall_s": round(wall, 3),
        }
