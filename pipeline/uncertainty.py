"""What an energy figure is worth: the bounds of the method that measured it, the spread of
repeated runs, and when two figures differ beyond their noise.

Two kinds of error, kept apart because they matter for different questions:

- **The method's bounds** (systematic). A counter (RAPL, NVML) and an estimate (CPU load x TDP,
  CodeCarbon's RAM model) are each off by some factor, the same way for every run that one method
  measured on one machine. They bound an *absolute* figure (joules, kWh, CO2eq): each component's
  reading E is taken to lie within [E / f, E x f] for its method's factor f (``FACTORS``, with the
  basis of each in docs/energy.md), and a total within the sum of its components' bounds (no
  cancellation assumed). Between runs measured the same way on the same machine they mostly
  cancel, which is why ``compare`` keeps runs of different methods and machines apart
  (``pipeline.fingerprint``) and counts these bounds only when asked to mix them.
- **The spread of repeated runs** (random): the same configuration run N times (``train.repeats``,
  or reruns) gives a mean and a Student-t confidence interval; its coefficient of variation,
  pooled over the configurations that were repeated, is the noise of the runs that were not.

Two figures differ **beyond the noise** when their difference exceeds ``Z`` times the combined
standard error of the two (``beyond``).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Z = 1.96  # two-sided 95 %: the confidence of every interval and every "beyond the noise"

# Factor f of each measuring method's bound: a reading E is taken to lie in [E / f, E x f].
# The basis of each is in docs/energy.md ("What a figure is worth").
FACTORS: dict[str, float] = {
    "cpu=rapl": 1.1,
    "cpu=intel_power_gadget": 1.1,
    "cpu=windows_emi": 1.1,
    "cpu=estimate:cpu_load*tdp": 2.0,
    "cpu=estimate:constant_tdp": 3.0,
    "ram=estimate": 2.0,
    "gpu=nvml": 1.05,
    "gpu=zeus:nvml_counter": 1.05,
    "gpu=zeus:nvml_power_sampling": 1.25,
    "gpu=none": 1.0,
}
UNKNOWN_FACTOR = 3.0  # a method this table does not know: the widest bound of an estimate


def factors(method: str) -> dict[str, float]:
    """The bound factor of each component (cpu, ram, gpu) of an ``energy_method`` such as
    ``cpu=rapl;ram=estimate;gpu=none``. A sum of readings measured different ways (``a+b``)
    takes the wider factor of each component."""
    out: dict[str, float] = {}
    for reading in method.split("+"):
        for part in reading.split(";"):
            part = part.strip()
            if "=" not in part:
                continue
            component = part.split("=", 1)[0]
            out[component] = max(out.get(component, 1.0), FACTORS.get(part, UNKNOWN_FACTOR))
    return out


def bounds_j(method: str, cpu_j: float | None, ram_j: float | None, gpu_j: float | None) -> tuple[float, float] | None:
    """(low, high) joules that the total of these components lies within by its method's bounds;
    None when the method is unavailable or a component was not measured."""
    if method in ("", "unavailable", "unknown") or None in (cpu_j, ram_j, gpu_j):
        return None
    f = factors(method)
    parts = {"cpu": cpu_j, "ram": ram_j, "gpu": gpu_j}
    low = sum(j / f.get(c, UNKNOWN_FACTOR) for c, j in parts.items())
    high = sum(j * f.get(c, UNKNOWN_FACTOR) for c, j in parts.items())
    return low, high


@dataclass(frozen=True)
class Spread:
    """Repeated measurements of one quantity: mean, sample standard deviation, count."""

    n: int
    mean: float
    sd: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        values = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not values:
            return None
        return cls(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

    @property
    def cv(self) -> float | None:
        """Coefficient of variation of one measurement (sd / mean); None from a single value."""
        return self.sd / abs(self.mean) if self.n > 1 and self.mean else None

    @property
    def sem(self) -> float | None:
        """Standard error of the mean; None from a single value."""
        return self.sd / math.sqrt(self.n) if self.n > 1 else None

    @property
    def ci95(self) -> float | None:
        """Half-width of the mean's 95 % confidence interval (Student's t, n - 1 degrees of freedom)."""
        if self.n < 2:
            return None
        from scipy.stats import t

        return float(t.ppf(0.5 + 0.95 / 2, self.n - 1)) * self.sd / math.sqrt(self.n)

    def summary(self) -> dict[str, float | int | None]:
        return {"n": self.n, "mean": self.mean, "sd": self.sd if self.n > 1 else None, "ci95": self.ci95,
                "cv": self.cv}


def pooled_cv(spreads: Sequence[Spread]) -> tuple[float, int] | None:
    """The coefficient of variation of one run, pooled over repeated configurations (root of the
    degrees-of-freedom-weighted mean of their squared CVs), and the configurations it came from;
    None when no configuration was repeated."""
    used = [s for s in spreads if s.cv is not None]
    dof = sum(s.n - 1 for s in used)
    if not dof:
        return None
    return math.sqrt(sum((s.n - 1) * s.cv ** 2 for s in used) / dof), len(used)


def binomial_se(accuracy: float | None, n: int | None) -> float | None:
    """Standard error of an accuracy measured on n samples (each right or wrong)."""
    if accuracy is None or not n or n < 1:
        return None
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def beyond(a: float, b: float, se_a: float | None, se_b: float | None) -> bool:
    """Whether ``a`` and ``b`` differ beyond their noise: by more than ``Z`` combined standard
    errors (missing errors count as zero: two exact figures differ when they differ)."""
    return abs(a - b) > Z * math.hypot(se_a or 0.0, se_b or 0.0)
