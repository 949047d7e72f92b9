"""Predicting a training run's total energy and time, and its energy to a target accuracy, from
the epochs it has run so far.

After each epoch the run knows what every epoch cost (joules, seconds) and its validation
accuracy. ``forecast`` turns that into three predictions:

- **How many epochs the run will take.** Without early stopping: ``max_epochs``. With it, the
  validation accuracy so far is fitted with a saturating learning curve ``a - b * t**-c`` (a power
  law, the usual model of learning curves; ``c`` is fixed at 1 when only two epochs exist). The
  curve's gain shrinks; once what it gains over a patience window falls below the noise of the
  validation accuracy (the binomial standard error on the validation split), new bests come by
  chance only, and early stopping ends the run ``patience`` epochs later. The curve decides the
  stopping epoch from ``STOP_CURVE_EPOCHS`` epochs on (three parameters and one epoch more);
  before, the run is taken to use ``max_epochs``, the linear rule's assumption.
- **The cost of an epoch to come**: the fastest epoch so far, at the run's mean power so far.
  Epoch times only ever gain from extra work that not every epoch does (the first one's
  start-up, a checkpoint written, the store's writer starting): the fastest epoch is the typical
  one's floor. Power comes from the whole run so far, because an epoch's own joules depend on
  where the meter's samples fell (one per ``measure_power_secs``) and epochs are often shorter.
- **Energy to the target accuracy**: the energy so far plus the epochs the fitted curve needs to
  reach the target, if it reaches it before the predicted end; ``None`` when it does not.

``reachable`` answers a different question, for a search that prunes the trials that cannot reach
a target: not the accuracy a run is *expected* to end at (the curve's), but the most it can
plausibly reach, an upper bound that a run which does reach the target seldom falls below.

Predicted totals are the energy and time so far plus the remaining epochs at the predicted cost.
``errors`` compares what was predicted after each epoch with what the run measured in the end.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.uncertainty import Z, binomial_se

# The stopping epoch is predicted from the curve's shape once it is identifiable: its three
# parameters and one epoch more. Before, the run is taken to use max_epochs.
STOP_CURVE_EPOCHS = 4
# Beyond this many epochs the search for the stopping epoch or the target gives up (a curve can
# creep forever); max_epochs bounds every run anyway.
_HORIZON = 100_000


@dataclass(frozen=True)
class Epoch:
    """What one finished epoch cost and reached."""

    energy_j: float | None
    duration_s: float
    val_acc: float | None


@dataclass(frozen=True)
class Forecast:
    """What a run predicts after ``after`` epochs."""

    after: int
    epochs: int
    total_j: float | None
    total_s: float
    to_target_j: float | None  # None: the curve does not reach the target before the predicted end
    to_target_epochs: int | None

    def metrics(self) -> dict[str, float]:
        out = {"predicted/epochs": float(self.epochs), "time/predicted_total_s": self.total_s}
        if self.total_j is not None:
            out["energy/predicted_total_j"] = self.total_j
        if self.to_target_j is not None:
            out["energy/predicted_to_target_j"] = self.to_target_j
        return out


@dataclass(frozen=True)
class Curve:
    """A saturating learning curve ``acc(t) = a - b * t**-c`` over epochs t = 1, 2, ..."""

    a: float
    b: float
    c: float

    def __call__(self, t: float) -> float:
        return self.a - self.b * t ** -self.c

    def gain(self, t: int) -> float:
        """What epoch t adds over epoch t - 1."""
        return self(t) - self(t - 1)

    @classmethod
    def fit(cls, accs: Sequence[float]) -> Curve | None:
        """The curve through the running best of ``accs`` (best so far: what early stopping and the
        target see); None from fewer than two epochs or a curve that does not rise."""
        best = list(accs)
        for i in range(1, len(best)):
            best[i] = max(best[i], best[i - 1])
        if len(best) < 2 or best[-1] <= best[0]:
            return None if len(best) < 2 else cls(best[-1], 0.0, 1.0)
        t = [float(i + 1) for i in range(len(best))]
        if len(best) == 2:
            b = (best[1] - best[0]) / (1 - 1 / 2)
            return cls(best[1] + b / 2, b, 1.0)
        return cls._least_squares(t, best)

    @classmethod
    def _least_squares(cls, t: list[float], y: list[float]) -> Curve:
        """Least squares over c on a grid (a and b are linear given c): robust with few points."""
        best_fit: tuple[float, Curve] | None = None
        for c in (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0):
            x = [ti ** -c for ti in t]
            mx, my = statistics.fmean(x), statistics.fmean(y)
            sxx = sum((xi - mx) ** 2 for xi in x)
            slope = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx
            b = max(-slope, 0.0)
            a = my + b * mx
            sse = sum((yi - (a - b * xi)) ** 2 for xi, yi in zip(x, y, strict=True))
            if best_fit is None or sse < best_fit[0] - 1e-15:
                best_fit = (sse, cls(a, b, c))
        return best_fit[1]


def stopping_epoch(curve: Curve | None, done: int, max_epochs: int, patience: int, noise: float,
                   last_best: int | None = None) -> int:
    """The epoch (1-based count) a run will end at: ``max_epochs`` without early stopping or a
    curve; otherwise ``patience`` epochs after the first epoch t (from now on) from which the
    curve gains less than ``noise`` over the next ``patience`` epochs, or, when that holds
    already, after the last best so far (``last_best``, default now)."""
    if patience <= 0 or curve is None:
        return max_epochs
    t = done
    while t < min(max_epochs, _HORIZON) and curve(t + patience) - curve(t) >= noise:
        t += 1
    flat = t if t > done else (done if last_best is None else last_best)
    return max(done, min(max_epochs, flat + patience))


def forecast(epochs: Sequence[Epoch], *, max_epochs: int, patience: int, target: float,
             val_samples: int) -> Forecast:
    """What the run predicts after ``epochs`` (see the module's rules)."""
    done = len(epochs)
    accs = [e.val_acc for e in epochs if e.val_acc is not None and math.isfinite(e.val_acc)]
    curve = Curve.fit(accs) if len(accs) == done else None
    now = max(accs) if accs else 0.0
    noise = math.sqrt(max(now * (1 - now), 1e-12) / max(val_samples, 1))
    last_best = accs.index(now) + 1 if accs else None
    end = stopping_epoch(curve if done >= STOP_CURVE_EPOCHS else None, done, max_epochs, patience, noise, last_best)

    per_s = min(e.duration_s for e in epochs)
    joules = [e.energy_j for e in epochs]
    measured = None not in joules
    so_far_j = sum(joules) if measured else None
    so_far_s = sum(e.duration_s for e in epochs)
    # An epoch's energy is the run's mean power so far times an epoch's time: an epoch's own
    # joules depend on where the meter's samples fell (one per measure_power_secs), time does not.
    per_j = so_far_j / so_far_s * per_s if measured and so_far_s > 0 else None
    remaining = end - done
    total_j = None if per_j is None else so_far_j + remaining * per_j

    to_target_epochs = None
    if accs and max(accs) >= target:
        to_target_epochs = next(i + 1 for i, a in enumerate(accs) if a >= target)
    elif curve is not None and curve.a >= target:
        t = done + 1
        while t <= end and curve(t) < target:
            t += 1
        to_target_epochs = t if t <= end else None
    to_target_j = None
    if to_target_epochs is not None and measured:
        if to_target_epochs <= done:
            to_target_j = sum(joules[:to_target_epochs])
        else:
            to_target_j = so_far_j + (to_target_epochs - done) * per_j
    return Forecast(done, end, total_j, so_far_s + remaining * per_s, to_target_j, to_target_epochs)


def reachable(accs: Sequence[float], epochs: int, val_samples: int, z: float = Z) -> float | None:
    """Upper bound (``z`` standard errors) on the best validation accuracy a run reaches by its
    epoch ``epochs``, from its accuracies so far; None under two epochs.

    The running best continued to the last epoch at its mean pace so far: learning curves flatten
    as they go, so a straight line overestimates what is to come, while the saturating curve of
    ``Curve`` (the expected end) may not: a slow run that climbs steadily, or that starts flat and
    then rises, ends above it. Its error is the noise of the accuracies the line was drawn from
    (the binomial error of the best so far, and that of the pace, from two such accuracies, carried
    over the epochs to come). ``benchmarks/target_pruning.py`` replays both on real learning curves:
    how many trials that went on to reach a target each would have cut, and what each saves."""
    best = [max(accs[: i + 1]) for i in range(len(accs))]
    n = len(best)
    if n < 2:
        return None
    remaining = max(epochs - n, 0)
    pace = (best[-1] - best[0]) / (n - 1)
    se = binomial_se(best[-1], val_samples) or 0.0
    se_pace = math.sqrt(2) * se / (n - 1)
    return best[-1] + pace * remaining + z * math.hypot(se, remaining * se_pace)


def linear_rule(epochs: Sequence[Epoch], max_epochs: int) -> float | None:
    """carbontracker's prediction: the first epoch's energy times the epochs planned."""
    return None if not epochs or epochs[0].energy_j is None else epochs[0].energy_j * max_epochs


def error_pct(predicted: float | None, actual: float | None) -> float | None:
    """Signed error of a prediction in percent of the measured value."""
    if predicted is None or not actual:
        return None
    return 100.0 * (predicted - actual) / actual


def errors(forecasts: Sequence[Forecast], total_j: float | None, total_s: float,
           to_target_j: float | None) -> list[dict[str, float]]:
    """Per forecast, the signed errors (%) of what it predicted against what was measured."""
    out = []
    for f in forecasts:
        row = {"energy/predicted_total_error_pct": error_pct(f.total_j, total_j),
               "time/predicted_total_error_pct": error_pct(f.total_s, total_s),
               "energy/predicted_to_target_error_pct": error_pct(f.to_target_j, to_target_j)}
        out.append({k: v for k, v in row.items() if v is not None})
    return out
