"""Energy of predictions, measured so that models can be compared on a shared, noisy machine.

Three things make a single timed window a poor reading for models that take 0.1-2 ms per batch:

* **Threads.** Torch's intra-op threads wait on each other after every small kernel; on a 2-core
  machine that synchronisation costs more CPU than the kernels save, and it stalls whenever the
  other core is busy. Inference is measured with ``evaluate.num_threads`` threads (default 1, a
  serving worker per core); 0 leaves torch's own choice.
* **Allocator.** Each forward pass allocates its activations anew. With glibc's default tuning,
  whether a buffer of a few MB comes back from the heap or is mapped and page-faulted again depends
  on what the process allocated before (its dynamic mmap/trim thresholds): the same fp32 CNN ran at
  13-18 us per prediction in some processes and 18-33 us in others. With ``evaluate.steady_allocator``
  (default) the thresholds are fixed high before measuring, so buffers are reused as in a
  long-running server (what jemalloc/tcmalloc, which PyTorch's CPU tuning guide recommends, do).
* **Drift.** The machine's speed changes from one second to the next (other virtual machines on the
  host, frequency). Each model's measured time (``evaluate.energy_min_duration_s``) is split into
  ``evaluate.energy_rounds`` rounds, and models compared with each other are measured in the same
  rounds, alternating (order reversed every other round). A ratio between two models is the median
  over rounds of the ratio of their readings in that round: drift that hits both cancels.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipeline import interrupts
from pipeline.energy import EnergyMeter, EnergyReading


@contextmanager
def inference_threads(n: int) -> Iterator[None]:
    """``n`` torch intra-op threads inside the block (0: leave torch's setting), restored after."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
STEADY_MMAP_BYTES, STEADY_TRIM_BYTES = 64 << 20, 128 << 20
_allocator = "default"


def steady_allocator() -> str:
    """Fix glibc's mmap and trim thresholds high (64 and 128 MiB) for the rest of the process, so
    freed activation buffers are reused instead of unmapped and page-faulted again. One-way (glibc
    keeps fixed thresholds); a no-op where the C library is not glibc. Returns the allocator
    setting in force, as recorded with the figures."""
    global _allocator
    if _allocator == "default" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(libc, "mallopt") and libc.mallopt(_M_MMAP_THRESHOLD, STEADY_MMAP_BYTES) == 1 \
                    and libc.mallopt(_M_TRIM_THRESHOLD, STEADY_TRIM_BYTES) == 1:
                _allocator = "glibc-steady"
        except OSError:
            pass
    return _allocator


def allocator_setting() -> str:
    return _allocator


def model_device(model: nn.Module) -> torch.device:
    """Where a model computes: its first parameter's or buffer's device (quantized modules keep
    their weights packed, outside both: they run on the CPU)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)  # lazily: called on every pass
    return torch.device("cpu") if first is None else first.device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously), so a clock reads its end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def logits(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """The model's outputs over a whole split, ``batch_size`` samples at a time, on the CPU: the
    one batched prediction (evaluation, the energy readings, a teacher's logits for
    distillation). ``x`` is copied to the model's device once if it is elsewhere (measurements
    place it there first). ``device``: where the model computes, where the caller knows it (a
    measured pass does not look it up again: a walk over the model's parameters, ~10 us a pass).
    The model is run as it is: callers put it in eval mode (loaded models are)."""
    x = x.to(device if device is not None else model_device(model))
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).cpu()


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Predicted classes over a split (``logits`` then argmax), on the CPU."""
    return logits(model, x, batch_size, device).argmax(1)


@dataclass(frozen=True)
class RoundReadings:
    """One model's energy readings, one per round, the predictions made and this process's CPU
    seconds in each."""

    readings: tuple[EnergyReading, ...]
    predictions: tuple[int, ...]
    cpu_s: tuple[float, ...]

    @property
    def total(self) -> EnergyReading:
        total = self.readings[0]
        for r in self.readings[1:]:
            total = total + r
        return total

    @property
    def n_pred(self) -> int:
        return sum(self.predictions)

    def per_1k_j(self) -> list[float] | None:
        """Energy per 1,000 predictions in each round; None when energy was not measured."""
        if any(r.energy_j is None for r in self.readings):
            return None
        return [r.energy_j / n * 1000 for r, n in zip(self.readings, self.predictions, strict=True)]

    def cpu_s_per_1k(self) -> list[float]:
        return [c / n * 1000 for c, n in zip(self.cpu_s, self.predictions, strict=True)]

    def spread(self) -> float | None:
        """Interquartile range of the rounds' energy per prediction, relative to their median."""
        values = self.per_1k_j()
        if not values or len(values) < 2:
            return None
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return (q3 - q1) / statistics.median(values)


def measure_rounds(models: dict[str, nn.Module], x: torch.Tensor, batch_size: int, min_duration_s: float,
                   rounds: int, meter: EnergyMeter) -> dict[str, RoundReadings]:
    """Each model's prediction energy over ``rounds`` rounds, the models alternating inside each
    round (reversed order every other round). A reading is whole passes over x at ``batch_size``
    lasting at least ``min_duration_s / rounds``, after one warm-up pass outside it."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    per_round_s = min_duration_s / rounds
    readings: dict[str, list[EnergyReading]] = {name: [] for name in models}
    counts: dict[str, list[int]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    on = {d: x.to(d) for d in {model_device(m) for m in models.values()}}  # the inputs where each model computes
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            interrupts.check()  # between readings: Ctrl-C ends a long measurement within one reading
            model = models[name]
            device = model_device(model)
            xm = on[device]
            predict(model, xm, batch_size, device)  # warm-up: caches and allocator for this model
            passes = 0
            c0 = time.process_time()
            with meter.measure() as m:
                t0 = time.perf_counter()
                while passes == 0 or time.perf_counter() - t0 < per_round_s:
                    predict(model, xm, batch_size, device)  # ends with a copy to the CPU: the device's work is done
                    passes += 1
            cpu[name].append(time.process_time() - c0)
            readings[name].append(m.total)
            counts[name].append(passes * len(x))
    return {name: RoundReadings(tuple(readings[name]), tuple(counts[name]), tuple(cpu[name])) for name in models}


def paired_ratios(model: list[float] | None, reference: list[float] | None) -> list[float] | None:
    """Per round: the model's value over the reference's in the same round (e.g. ``per_1k_j()``)."""
    if model is None or reference is None or len(model) != len(reference):
        return None
    return [a / b for a, b in zip(model, reference, strict=True) if b > 0]


def ratio_summary(ratios: list[float] | None) -> dict[str, float]:
    """Median of the paired ratios and their quartiles (empty when there is nothing to compare)."""
    if not ratios:
        return {}
    if len(ratios) == 1:
        return {"energy_ratio": ratios[0]}
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"energy_ratio": statistics.median(ratios), "energy_ratio_q1": q1, "energy_ratio_q3": q3}
