"""Where and how a process computes: the accelerator, devices, strategy and precision of a
training run (checked against what torch sees here), and how many torch threads a process
takes while other pipeline processes compute beside it (ranks: ``pipeline.ranks``).

Threads. Two processes that each take torch's default (one thread per core) on the same cores
run many times slower than alone, and their energy and even their accuracy then depend on the
load. ``train.threads: auto`` shares the cores among the pipeline processes that compute on this
machine at the same time, whoever started them (``dvc queue start -j N``, search workers, DDP
ranks, two shells): each such process holds one *CPU slot* while it trains, a lock file in a
machine-wide folder (``filelock``; the OS releases it when the process ends, however it ends),
and takes ``cores // slots held`` threads, counted again at every epoch. ``OMP_NUM_THREADS`` set
when the process started is the user's choice and wins over ``auto``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import ParamsError, TrainCfg
from pipeline.ranks import local_rank

log = logging.getLogger(__name__)

# Read before Lightning's DDP launcher sets it in this process.
_OMP_NUM_THREADS = os.environ.get("OMP_NUM_THREADS", "")

# Lightning's names for the precisions params.yaml accepts.
PRECISION = {"32": "32-true", "16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed"}


# -- devices -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Devices:
    """What one training run computes on, resolved from ``train``'s keys."""

    accelerator: str          # cpu | cuda | mps
    devices: int | tuple[int, ...]
    strategy: str             # auto (one process) | ddp | ddp_find_unused_parameters_true
    num_nodes: int
    precision: str            # Lightning's name: 32-true | 16-mixed | bf16-mixed

    @property
    def processes_per_node(self) -> int:
        return self.devices if isinstance(self.devices, int) else len(self.devices)

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.num_nodes

    @property
    def gpu_ids(self) -> list[int] | None:
        """The GPU this process computes on (one per rank), for the energy meter; None off CUDA."""
        if self.accelerator != "cuda":
            return None
        ids = list(range(self.devices)) if isinstance(self.devices, int) else list(self.devices)
        return [ids[min(local_rank(), len(ids) - 1)]]

    def trainer_kwargs(self) -> dict[str, Any]:
        accelerator = "gpu" if self.accelerator == "cuda" else self.accelerator
        devices = list(self.devices) if isinstance(self.devices, tuple) else self.devices
        strategy: Any = self.strategy
        if strategy.startswith("ddp"):
            from pipeline.private_api import ddp_strategy

            strategy = ddp_strategy(find_unused_parameters=strategy == "ddp_find_unused_parameters_true")
        return {"accelerator": accelerator, "devices": devices, "strategy": strategy,
                "num_nodes": self.num_nodes, "precision": self.precision}

    def record(self) -> dict[str, Any]:
        """What a run records about where it computed (params ``compute.*``)."""
        out: dict[str, Any] = {"accelerator": self.accelerator, "devices": self.devices, "strategy": self.strategy,
                               "num_nodes": self.num_nodes, "world_size": self.world_size,
                               "precision": self.precision}
        if self.accelerator == "cuda":
            import torch

            ids = self.devices if isinstance(self.devices, tuple) else range(self.devices)
            out["device_names"] = ", ".join(torch.cuda.get_device_name(i) for i in ids)
        return out

    def single(self) -> Devices:
        """The same device kind in one process (a search trial, a sweep point: their stages run
        one training after another in one process)."""
        first = self.devices if isinstance(self.devices, int) else self.devices[:1]
        return Devices(self.accelerator, 1 if isinstance(first, int) else first, "auto", 1, self.precision)


def _gpu_kind() -> str | None:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return None


# What says a command was started as one machine of a multi-node run: Lightning's own variables
# (MASTER_ADDR with NODE_RANK, set by the user on each machine), or a launcher's (SLURM, torchrun,
# MPI, LSF), each of which Lightning reads.
MULTI_NODE_LAUNCH = (("MASTER_ADDR", "NODE_RANK"), ("SLURM_NTASKS",), ("TORCHELASTIC_RUN_ID",),
                     ("OMPI_COMM_WORLD_SIZE",), ("PMI_SIZE",), ("LSB_JOBID",))


def resolve_devices(cfg: TrainCfg) -> Devices:
    """``train.accelerator``, ``devices``, ``strategy``, ``num_nodes`` and ``precision`` checked
    against this machine; a ParamsError names the key (never a silent fallback to the CPU)."""
    import torch

    gpu = _gpu_kind()
    if cfg.accelerator == "gpu" and gpu is None:
        raise ParamsError(f"train.accelerator: gpu asked for, but torch {torch.__version__} sees none "
                          f"(torch.cuda.is_available() is False; CUDA build: {torch.version.cuda or 'none'}). "
                          "Use accelerator auto or cpu, or install a CUDA build of torch (docs/scale-out.md)")
    kind = "cpu" if cfg.accelerator == "cpu" else (gpu or "cpu")
    devices: int | tuple[int, ...] = cfg.devices if isinstance(cfg.devices, int) else tuple(cfg.devices)
    if kind == "cuda":
        count = torch.cuda.device_count()
        wanted = devices if isinstance(devices, int) else max(devices) + 1
        if wanted > count:
            raise ParamsError(f"train.devices: {cfg.devices} asks for more GPUs than the {count} torch sees here")
    elif kind == "cpu" and not isinstance(devices, int):
        raise ParamsError(f"train.devices: a list of device ids ({cfg.devices}) names GPUs; on the CPU give "
                          "a number of processes")
    if kind == "cpu" and devices > cores():
        log.warning("train.devices: %d CPU processes on %d cores: they will share cores", devices, cores())
    if cfg.precision == "16-mixed" and kind != "cuda":
        raise ParamsError(f"train.precision: 16-mixed needs a CUDA GPU (this run computes on the {kind}); "
                          "use bf16-mixed or 32")
    if cfg.precision == "bf16-mixed" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ParamsError(f"train.precision: bf16-mixed is not supported by {torch.cuda.get_device_name(0)}; "
                          "use 16-mixed or 32")
    if cfg.num_nodes > 1 and not any(all(v in os.environ for v in launch) for launch in MULTI_NODE_LAUNCH):
        # Alone, the command would be node 0 waiting for the others (torch's 30 min rendezvous
        # timeout), in C++ where neither Ctrl-C nor SIGTERM reaches it.
        raise ParamsError(f"train.num_nodes: {cfg.num_nodes} machines asked for, but this command was not "
                          "started as one of them: run the same command on each machine with MASTER_ADDR, "
                          "MASTER_PORT and NODE_RANK set (or under SLURM or torchrun, which set them); "
                          "docs/scale-out.md")
    resolved = Devices(kind, devices, cfg.strategy, cfg.num_nodes, PRECISION[cfg.precision])
    # auto is DDP over several processes; DDP over one process is one process.
    strategy = "auto" if resolved.world_size == 1 else ("ddp" if cfg.strategy == "auto" else cfg.strategy)
    return replace(resolved, strategy=strategy)


def resolve_eval_device(asked: str, trained_on: str) -> str:
    """``evaluate.device`` checked against this machine: ``train`` is where the model was trained
    (its run.json's ``compute.accelerator``); a GPU asked for where torch sees none is a
    ParamsError naming the key, never a silent CPU run. Returns torch's device name."""
    import torch

    name = trained_on if asked == "train" else asked
    name = "cuda" if name == "gpu" else name
    kind, _, index = name.partition(":")
    where = f"evaluate.device: {asked}" + (f" (the model was trained on {trained_on})" if asked == "train" else "")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= count:
            raise ParamsError(f"{where}, but torch {torch.__version__} sees {count} CUDA GPU(s) here; "
                              "set evaluate.device: cpu (or a GPU that exists)")
    elif kind == "mps" and _gpu_kind() != "mps":
        raise ParamsError(f"{where}, but torch sees no Apple GPU (MPS) here; set evaluate.device: cpu")
    elif kind not in ("cpu", "cuda", "mps"):
        raise ParamsError(f"{where}: unknown device {name!r} (cpu, cuda, cuda:N or mps)")
    return name


# -- threads -------------------------------------------------------------------------------------
def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def slots_dir() -> Path:
    """The machine-wide folder of CPU slots (one per user: processes of one user share it)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"energy-pipeline-{uid}" / "cpu-slots"


class CpuSlots:
    """Lock files, one held by each pipeline process that computes on this machine."""

    def __init__(self, folder: Path | None = None, size: int | None = None):
        self.folder = folder or slots_dir()
        self.size = size or max(8, 4 * cores())
        self._held = None

    def _take(self, i: int):
        """Slot ``i``'s lock, now held by this process, or None when another holds it."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.folder / f"slot-{i}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return None
        return lock

    def claim(self) -> bool:
        """Hold a free slot until ``release`` or the end of the process. False when this process
        holds one already, or every slot is taken (the process then counts as one more)."""
        if self._held is not None:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._held = next(filter(None, map(self._take, range(self.size))), None)
        return self._held is not None

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
            self._held = None

    def active(self) -> int:
        """Slots held now, by any process (this one's included; at least 1)."""
        if not self.folder.is_dir():
            return 1
        held = 0
        for i in range(self.size):
            lock = self._take(i)
            if lock is None:
                held += 1
            else:
                lock.release()
        return max(held + (self._held is None), 1)


_slots = CpuSlots()


@contextmanager
def cpu_slot() -> Iterator[None]:
    """Count this process among those computing on the machine for the enclosed block (nested
    blocks count once)."""
    claimed = _slots.claim()
    try:
        yield
    finally:
        if claimed:
            _slots.release()


def share_threads(setting: int | str, beside: int = 1) -> tuple[int, str]:
    """Set torch's intra-op threads for this process: ``setting`` as given, or for ``auto`` the
    cores divided among the processes computing now (at least ``beside``: ranks or workers known
    to be starting). Returns (threads, how they were chosen)."""
    import torch

    if setting != "auto":
        n, why = int(setting), "train.threads"
    elif _OMP_NUM_THREADS.isdigit() and int(_OMP_NUM_THREADS) > 0:
        n, why = int(_OMP_NUM_THREADS), "auto: OMP_NUM_THREADS set when the process started"
    else:
        processes = max(_slots.active(), beside)
        n = max(1, cores() // processes)
        why = f"auto: {cores()} cores / {processes} processes computing"
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n, why

