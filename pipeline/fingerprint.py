"""Where a figure was measured, and which figures can share one Pareto front.

Every measured run is tagged (``EnergyMeter.tags()``) with a fingerprint: the machine (CPU model
and cores, GPUs and their driver, memory), the energy backend and method, the versions of the
libraries that compute and measure, and torch's threads. Its metrics ``energy/others_cores`` and
``energy/cores`` say how much other work ran beside it (``EnergyReading.others_cpu_s``).

Runs are **comparable** when they share a *condition*: the same machine (``host_id``), the same
energy method, and the same situation beside them, alone or shared. A run is *shared* when other
processes kept at least ``SHARED_SHARE`` of the machine's cores busy on average while it was
measured, for at least ``SHARED_MIN_CPU_S`` CPU-seconds in all (another experiment, a search
worker, a build); such a run pays for contention in time and energy, and its figures say so.
Library versions and threads are recorded, and shown where they differ, but do not split runs:
they belong to what is being compared. So is ``launch``: a command run in its own process or in
a child of the warm server (``pipeline.warm``).
"""
from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from typing import Any

SHARED_SHARE = 0.1  # other work on >= 10 % of the cores on average: the run shared the machine
# ... and at least this much of it: in a window of milliseconds (int8 quantization of a small model
# takes 12 ms) a daemon's tick or the launching process is 10 % of the cores, and says nothing.
SHARED_MIN_CPU_S = 0.1
LIBRARIES = ("torch", "lightning", "codecarbon", "zeus")
UNKNOWN = "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def gpu_driver() -> str | None:
    """NVIDIA's driver version through NVML (None without an NVIDIA GPU)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:
        return None


def host(hardware: dict[str, Any]) -> dict[str, str]:
    """The machine as CodeCarbon detected it (``tracker.get_detected_hardware()``): CPU model and
    logical cores, GPUs and driver, memory; plus an id that is the same on the same hardware."""
    from pipeline.compute import cores

    cpu = str(hardware.get("cpu_model") or platform.processor() or UNKNOWN)
    gpus = int(hardware.get("gpu_count") or 0)
    gpu = f"{gpus} x {hardware.get('gpu_model') or UNKNOWN}" if gpus else "none"
    driver = gpu_driver() if gpus else None
    ram = hardware.get("ram_total_size")
    out = {"host_cpu": cpu, "host_cores": str(cores()), "host_gpu": gpu + (f" (driver {driver})" if driver else ""),
           "host_ram_gb": f"{float(ram):.0f}" if ram else UNKNOWN}
    key = "|".join(out[k] for k in ("host_cpu", "host_cores", "host_gpu", "host_ram_gb"))
    out["host_id"] = hashlib.sha256(key.encode()).hexdigest()[:10]
    return out


def fingerprint(hardware: dict[str, Any], method: str, backend: str) -> dict[str, str]:
    """The tags of a measured run: the machine, how it was measured, with what software and threads."""
    import torch

    libs = [f"python {platform.python_version()}"]
    libs += [f"{name} {v}" for name in LIBRARIES if (v := _version(name)) is not None]
    from pipeline import warm

    return {**host(hardware), "energy_method": method, "energy_backend": backend,
            "libraries": ", ".join(libs), "torch_threads": str(torch.get_num_threads()),
            "launch": "warm server" if warm.served() else "own process"}


def beside(metrics: dict[str, float]) -> str:
    """``alone`` or ``shared`` from a run's ``energy/others_cores``, ``energy/cores`` and
    ``energy/duration_s``; ``unknown`` for a run that did not record them."""
    others, cores = metrics.get("energy/others_cores"), metrics.get("energy/cores")
    if others is None or not cores:
        return UNKNOWN
    if others * metrics.get("energy/duration_s", float("inf")) < SHARED_MIN_CPU_S:
        return "alone"
    return "shared" if others / cores >= SHARED_SHARE else "alone"


def condition(tags: dict[str, str], metrics: dict[str, float]) -> tuple[str, str, str]:
    """What makes two runs' energies comparable: (machine id, energy method, alone/shared)."""
    return (tags.get("host_id", UNKNOWN), tags.get("energy_method", UNKNOWN), beside(metrics))


def describe(cond: tuple[str, str, str], tags: dict[str, str] | None = None) -> str:
    """A condition in words, e.g. ``AMD EPYC x 2 cores, no GPU (host 1a2b3c4d5e); cpu=...; alone``."""
    host_id, method, situation = cond
    where = f"host {host_id}"
    if tags and tags.get("host_cpu"):
        gpu = tags.get("host_gpu", UNKNOWN)
        where = f"{tags['host_cpu']} x {tags.get('host_cores', '?')} cores, GPU {gpu} ({where})"
    return f"{where}; {method}; {situation}"
