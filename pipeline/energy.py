"""The one place that talks to CodeCarbon: measure any block of work, get a typed reading.

CodeCarbon's offline tracker (no network) runs in *process* mode, so CPU energy follows this
process's own CPU load and concurrent runs do not count each other's work. One tracker serves the
whole process through CodeCarbon's task API: its first start probes the hardware (1.3-2 s here),
later tasks cost ~6 ms. ``EnergyMeter.prewarm()`` does the probing on a background thread while
the caller imports and loads data, so short runs do not pay it on their critical path.

Every reading says how it was measured (``method``): a hardware counter (Intel RAPL, NVIDIA NVML),
an estimate from CPU load and TDP, or ``unavailable`` when CodeCarbon could not measure at all, in
which case the energy fields are ``None`` (never a silent zero).

``energy.backend: zeus`` hands the GPUs to Zeus (``ZeusMonitor``: NVML's energy counter of each
GPU, its power sampled on GPUs older than Volta that have none); CPU and RAM stay CodeCarbon's,
and the reading's emissions are its energy times CodeCarbon's carbon intensity. The method then
says ``gpu=zeus:nvml_counter``. Readings on one GPU per process keep the joules per device
(``energy/gpu<i>_j``); a DDP run's sum over ranks keeps every device's.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from pipeline import worktime
from pipeline.config import EnergyCfg, ParamsError
from pipeline.private_api import cpu_power_mode
from pipeline.ranks import gather
from pipeline.uncertainty import bounds_j

log = logging.getLogger(__name__)

J_PER_KWH = 3.6e6
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class EnergyReading:
    """Energy of one block of work. kWh and kg CO2eq as CodeCarbon reports them."""

    duration_s: float
    energy_kwh: float | None = None
    cpu_kwh: float | None = None
    gpu_kwh: float | None = None
    ram_kwh: float | None = None
    emissions_kg: float | None = None
    method: str = UNAVAILABLE
    cpu_method: str = UNAVAILABLE
    country_iso_code: str = ""
    backend: str = "codecarbon"
    # Joules of each GPU (by CUDA index) where known: the Zeus backend, or one GPU per process.
    gpu_j_by_device: dict[int, float] | None = None
    # CPU seconds of this process, and of every other process of the machine, during the block:
    # the work that ran beside the measurement (pipeline.fingerprint tells alone from shared).
    own_cpu_s: float | None = None
    others_cpu_s: float | None = None
    cores: int | None = None

    @property
    def energy_j(self) -> float | None:
        return None if self.energy_kwh is None else self.energy_kwh * J_PER_KWH

    @property
    def mean_power_w(self) -> float | None:
        if self.energy_kwh is None or self.duration_s <= 0:
            return None
        return self.energy_j / self.duration_s

    def __add__(self, other: EnergyReading) -> EnergyReading:
        def add(a, b):
            return None if a is None or b is None else a + b

        return replace(
            self,
            duration_s=self.duration_s + other.duration_s,
            energy_kwh=add(self.energy_kwh, other.energy_kwh),
            cpu_kwh=add(self.cpu_kwh, other.cpu_kwh),
            gpu_kwh=add(self.gpu_kwh, other.gpu_kwh),
            ram_kwh=add(self.ram_kwh, other.ram_kwh),
            emissions_kg=add(self.emissions_kg, other.emissions_kg),
            method=self.method if self.method == other.method else f"{self.method}+{other.method}",
            backend=self.backend if self.backend == other.backend else f"{self.backend}+{other.backend}",
            gpu_j_by_device=None if self.gpu_j_by_device is None or other.gpu_j_by_device is None else {
                i: self.gpu_j_by_device.get(i, 0.0) + other.gpu_j_by_device.get(i, 0.0)
                for i in sorted({*self.gpu_j_by_device, *other.gpu_j_by_device})},
            own_cpu_s=add(self.own_cpu_s, other.own_cpu_s),
            others_cpu_s=add(self.others_cpu_s, other.others_cpu_s),
        )

    @classmethod
    def concurrent(cls, readings: list[EnergyReading]) -> EnergyReading:
        """The reading of work done by several processes at once (the ranks of a DDP run): the
        energies and emissions summed, the duration the longest; the work beside it is what
        each process saw beside itself less the other processes of the run (the least of them)."""
        total = sum(readings[1:], readings[0])
        others = None
        if all(r.others_cpu_s is not None and r.own_cpu_s is not None for r in readings):
            own = sum(r.own_cpu_s for r in readings)
            others = max(0.0, min(r.others_cpu_s - (own - r.own_cpu_s) for r in readings))
        return replace(total, duration_s=max(r.duration_s for r in readings), others_cpu_s=others)

    @property
    def bounds_j(self) -> tuple[float, float] | None:
        """(low, high) joules by the bounds of the method that measured it (pipeline.uncertainty)."""
        j = J_PER_KWH
        return bounds_j(self.method, *(None if v is None else v * j for v in (self.cpu_kwh, self.ram_kwh, self.gpu_kwh)))

    @property
    def others_cores(self) -> float | None:
        """Cores kept busy on average by other processes during the block."""
        if self.others_cpu_s is None or self.duration_s <= 0:
            return None
        return self.others_cpu_s / self.duration_s

    def metrics(self, prefix: str = "energy") -> dict[str, float]:
        """Flat metric dict (only measured values) with units in the names."""
        values = {
            f"{prefix}/duration_s": self.duration_s,
            f"{prefix}/total_kwh": self.energy_kwh,
            f"{prefix}/total_j": self.energy_j,
            f"{prefix}/cpu_kwh": self.cpu_kwh,
            f"{prefix}/gpu_kwh": self.gpu_kwh,
            f"{prefix}/ram_kwh": self.ram_kwh,
            f"{prefix}/emissions_kg": self.emissions_kg,
            f"{prefix}/mean_power_w": self.mean_power_w,
            **{f"{prefix}/gpu{i}_j": j for i, j in (self.gpu_j_by_device or {}).items()},
            f"{prefix}/total_j_low": None if self.bounds_j is None else self.bounds_j[0],
            f"{prefix}/total_j_high": None if self.bounds_j is None else self.bounds_j[1],
            f"{prefix}/others_cores": self.others_cores,
            f"{prefix}/cores": self.cores,
        }
        return {k: float(v) for k, v in values.items() if v is not None}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["energy_j"] = self.energy_j
        d["mean_power_w"] = self.mean_power_w
        d["bounds_j"] = self.bounds_j
        d["others_cores"] = self.others_cores
        return d


def describe_method(tracker) -> tuple[str, str]:
    """(overall method, CPU method) from the hardware CodeCarbon chose: the GPUs it tracks from its
    public ``get_detected_hardware()``; the CPU's method has no public field (see
    ``private_api.cpu_power_mode``)."""
    cpu_mode = cpu_power_mode(tracker) or UNAVAILABLE
    gpu = bool(tracker.get_detected_hardware().get("gpu_count"))
    cpu_method = {
        "intel_rapl": "rapl",
        "intel_power_gadget": "intel_power_gadget",
        "windows_emi": "windows_emi",
        "cpu_load": "estimate:cpu_load*tdp",
        "constant": "estimate:constant_tdp",
    }.get(cpu_mode, cpu_mode)
    parts = [f"cpu={cpu_method}", "ram=estimate", f"gpu={'nvml' if gpu else 'none'}"]
    return ";".join(parts), cpu_method


@dataclass(frozen=True)
class Clock:
    """Wall time, this process's CPU seconds and the whole machine's busy CPU seconds (every
    process; None where the OS does not say), read together at the edges of a measured block."""

    wall: float
    own: float
    machine: float | None
    cores: int

    @classmethod
    def now(cls) -> Clock:
        from pipeline.compute import cores

        try:
            import psutil

            t = psutil.cpu_times()
            machine = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        except Exception:  # no machine-wide counters on this OS
            machine = None
        return cls(time.perf_counter(), time.process_time(), machine, cores())


class _CodeCarbonChatter(logging.Filter):
    """Keep CodeCarbon to warnings, minus the ones it repeats in every process: concurrent
    stages must be allowed to measure at once, and the hardware-probe notes are summed up in
    the one line this module logs about the method."""

    _REPEATED = ("Multiple instances of codecarbon", "We saw that you have", "We will use the default power",
                 "No CPU tracking mode found")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return record.levelno >= logging.WARNING and not any(r in msg for r in self._REPEATED)


class ZeusGpus:
    """The GPUs' energy from Zeus's ``ZeusMonitor`` (only the GPUs: CPU and RAM are CodeCarbon's)."""

    def __init__(self, gpu_ids: list[int] | None):
        from zeus.monitor import ZeusMonitor

        self.monitor = ZeusMonitor(gpu_indices=gpu_ids, cpu_indices=[])
        counters = [self.monitor.gpus.supports_get_total_energy_consumption(i) for i in self.monitor.gpu_indices]
        self.method = "zeus:nvml_counter" if all(counters) else "zeus:nvml_power_sampling"

    def begin(self, name: str) -> None:
        self.monitor.begin_window(name)

    def end(self, name: str) -> dict[int, float]:
        """Joules of each monitored GPU since ``begin(name)``."""
        return {int(i): float(j) for i, j in self.monitor.end_window(name).gpu_energy.items()}


def check_backend(cfg: EnergyCfg) -> None:
    """``energy.backend`` possible here, or a ParamsError naming the key."""
    if cfg.backend != "zeus":
        return
    import importlib.util

    import torch

    if importlib.util.find_spec("zeus") is None:
        raise ParamsError("energy.backend: zeus needs the zeus package: make install (or pip install -e '.[gpu]' "
                          "&& pip install --no-deps zeus==0.16.0), or use energy.backend: codecarbon")
    if not torch.cuda.is_available():
        raise ParamsError(f"energy.backend: zeus measures NVIDIA GPUs through NVML, and torch {torch.__version__} "
                          "sees no CUDA GPU here; use energy.backend: codecarbon")


class EnergyMeter:
    """Measures blocks of this process's work with one shared CodeCarbon tracker (and, with
    ``energy.backend: zeus``, one Zeus monitor for the GPUs)."""

    def __init__(self, cfg: EnergyCfg, gpu_ids: list[int] | None = None):
        check_backend(cfg)
        self.cfg = cfg
        self.gpu_ids = gpu_ids  # the GPUs this process computes on (None: every GPU found)
        self._zeus: ZeusGpus | None = None
        self._tracker = None
        self._error: str | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self.method = UNAVAILABLE
        self.cpu_method = UNAVAILABLE
        self.hardware: dict = {}

    # -- setup -------------------------------------------------------------------------------
    @staticmethod
    def _quiet_codecarbon() -> None:
        """CodeCarbon's own Python warnings (e.g. that ``save_to_file`` is deprecated) kept out
        of the output: a process-wide filter, set in the calling thread before the probe starts.
        Not ``warnings.catch_warnings`` around the probe: that is not thread-safe; open on the
        probing thread, it silenced every warning of the main thread meanwhile and, on leaving,
        threw away the filters the main thread had set meanwhile (the compress stage's)."""
        warnings.filterwarnings("ignore", module="codecarbon")

    def _init_tracker(self) -> None:
        try:
            cc_log = logging.getLogger("codecarbon")
            cc_log.setLevel(logging.WARNING)
            cc_log.addFilter(_CodeCarbonChatter())
            from codecarbon import OfflineEmissionsTracker

            kwargs = dict(
                country_iso_code=self.cfg.country_iso_code,
                tracking_mode="process",
                save_to_file=False,
                log_level="warning",
                measure_power_secs=self.cfg.measure_power_secs,
                allow_multiple_runs=True,
            )
            if self.cfg.region:
                kwargs["region"] = self.cfg.region
            if self.gpu_ids is not None:
                kwargs["gpu_ids"] = self.gpu_ids
            tracker = OfflineEmissionsTracker(**kwargs)
            # Probe the hardware now (the costly part), outside any measured block.
            tracker.start_task("probe")
            tracker.stop_task()
            self._tracker = tracker
            self.hardware = tracker.get_detected_hardware()
            self.method, self.cpu_method = describe_method(tracker)
            if self.cfg.backend == "zeus":
                self._zeus = ZeusGpus(self.gpu_ids)
                self.method = self.method.rsplit(";gpu=", 1)[0] + f";gpu={self._zeus.method}"
            if self.cpu_method.startswith("estimate"):
                log.warning("no hardware energy counter for the CPU; its power is estimated (%s)", self.method)
        except Exception as err:  # measurement must never take the run down with it
            self._error = f"{type(err).__name__}: {err}"
            log.warning("energy measurement unavailable, runs are logged without energy: %s", self._error)
        finally:
            self._ready.set()

    def prime(self) -> None:
        """Probe the hardware now, in this thread. CodeCarbon keeps what it found for the life of
        the process, so the processes forked from this one (``pipeline.warm``) start their first
        measurement in milliseconds instead of the probe's 1.3-2 s."""
        with self._lock:
            self._started = True
        self._quiet_codecarbon()
        self._init_tracker()

    def tags(self) -> dict[str, str]:
        """What a run that this meter measured is tagged with: who measured it, how, where, with
        what software and threads (``pipeline.fingerprint``)."""
        from pipeline.fingerprint import fingerprint

        self._wait_ready()  # the method is known once the hardware is probed
        return fingerprint(self.hardware, self.method, self.cfg.backend)

    def prewarm(self) -> EnergyMeter:
        """Start probing the hardware on a background thread; returns self."""
        with self._lock:
            if not self._started:
                self._started = True
                self._quiet_codecarbon()
                threading.Thread(target=self._init_tracker, name="energy-prewarm", daemon=True).start()
        return self

    def _wait_ready(self):
        self.prewarm()
        self._ready.wait()
        return self._tracker

    # -- measuring ---------------------------------------------------------------------------
    def _start(self) -> tuple[str | None, Clock]:
        tracker = self._wait_ready()
        name = None
        if tracker is not None:
            name = f"task-{uuid.uuid4().hex}"
            try:
                if self._zeus is not None:
                    self._zeus.begin(name)
                tracker.start_task(name)
            except Exception as err:
                log.warning("energy measurement failed to start (%s); continuing without it", err)
                name = None
        return name, Clock.now()

    def _stop(self, name: str | None, t0: Clock) -> EnergyReading:
        t1 = Clock.now()
        duration, own, others = t1.wall - t0.wall, t1.own - t0.own, None
        if t0.machine is not None and t1.machine is not None:
            others = max(0.0, (t1.machine - t0.machine) - own)
        cpu_s = {"own_cpu_s": own, "others_cpu_s": others, "cores": t0.cores}
        data = gpus = None
        if name is not None:
            try:
                gpus = self._zeus.end(name) if self._zeus is not None else None
                data = self._tracker.stop_task(name)
            except Exception as err:
                log.warning("energy measurement failed to stop (%s); reading marked unavailable", err)
        if data is None:
            return EnergyReading(duration_s=duration, country_iso_code=self.cfg.country_iso_code,
                                 backend=self.cfg.backend, **cpu_s)
        cpu, ram, gpu = float(data.cpu_energy), float(data.ram_energy), float(data.gpu_energy)
        total, emissions = float(data.energy_consumed), float(data.emissions)
        if gpus is not None:  # Zeus's GPU joules in place of CodeCarbon's; emissions at CodeCarbon's intensity
            gpu = sum(gpus.values()) / J_PER_KWH
            emissions = emissions / total * (cpu + ram + gpu) if total > 0 else emissions
            total = cpu + ram + gpu
        elif self.gpu_ids is not None and len(self.gpu_ids) == 1:
            gpus = {self.gpu_ids[0]: gpu * J_PER_KWH}  # CodeCarbon measured this one GPU only
        return EnergyReading(
            duration_s=duration,
            energy_kwh=total,
            cpu_kwh=cpu,
            gpu_kwh=gpu,
            ram_kwh=ram,
            emissions_kg=emissions,
            method=self.method,
            cpu_method=self.cpu_method,
            country_iso_code=self.cfg.country_iso_code,
            backend=self.cfg.backend,
            gpu_j_by_device=gpus,
            **cpu_s,
        )

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Measure the enclosed block; the Measurement's ``total`` holds the reading after it."""
        self._wait_ready()  # the hardware probe is the meter's own cost, not the work's
        with worktime.counted():
            m = Measurement(self)
            try:
                yield m
            finally:
                m.finish()


@dataclass
class Measurement:
    """A measured block split into consecutive segments (laps); the total is their sum."""

    meter: EnergyMeter
    segments: list[EnergyReading] = field(default_factory=list)
    _task: str | None = None
    _t0: Clock | None = None
    _open: bool = False

    def __post_init__(self):
        self._task, self._t0 = self.meter._start()
        self._open = True

    def lap(self) -> EnergyReading:
        """Close the current segment, start the next; return the closed segment's reading."""
        reading = self.meter._stop(self._task, self._t0)
        self.segments.append(reading)
        self._task, self._t0 = self.meter._start()
        return reading

    def replace_last(self, reading: EnergyReading) -> None:
        """Put ``reading`` in place of the last closed segment (the same segment measured by
        every rank of a distributed run, summed)."""
        self.segments[-1] = reading

    def finish(self) -> EnergyReading:
        if self._open:
            self.segments.append(self.meter._stop(self._task, self._t0))
            self._open = False
        return self.total

    @property
    def total(self) -> EnergyReading:
        """Sum of the closed segments (the whole block once finished)."""
        if not self.segments:
            return EnergyReading(duration_s=0.0, country_iso_code=self.meter.cfg.country_iso_code)
        return sum(self.segments[1:], self.segments[0])


class RankEnergy:
    """The energy of a distributed run's ranks: each rank measures its own process; ``combine``
    (called by every rank at the same point) sums one segment over the ranks and keeps each
    rank's joules so far (``by_rank``)."""

    def __init__(self):
        self.by_rank: list[float] | None = None

    def combine(self, reading: EnergyReading) -> EnergyReading:
        readings = gather(reading)
        joules = [r.energy_j or 0.0 for r in readings]
        self.by_rank = joules if self.by_rank is None else [a + b for a, b in zip(self.by_rank, joules, strict=True)]
        return EnergyReading.concurrent(readings)

    def metrics(self) -> dict[str, float]:
        return {f"energy/rank{i}_j": j for i, j in enumerate(self.by_rank or [])}
