"""Saving a search's energy with the trials' own predictions (``pipeline.prediction``).

After each epoch of a trial, ``TrialGuard`` reads what the trial predicts for itself and:

- **stops it for the budget** when its predicted total energy exceeds what is left of
  ``tune.search.energy_budget_kwh`` (the budget less every finished trial's energy): the trial
  ends PRUNED with ``stopped_for: budget``, its energy counted like any other trial's;
- **prunes it on the Pareto front** (``pruner: pareto``, accuracy+energy studies, whose two
  objectives Optuna's pruners do not support): when the point it is predicted to end at (the
  learning curve's accuracy at the predicted last epoch, the predicted total energy) is dominated,
  beyond the noise, by a completed trial. The rule is ``pipeline.pareto.noisy_front``'s: the
  predicted point is taken off the front only by a trial at least as good on both objectives and
  better beyond the noise on one. The noise of a completed trial's accuracy is the binomial error
  on the validation split; the predicted point adds the error of its prediction: the remaining
  energy (predicted total less the energy spent) counts as uncertain by ``REMAINING_REL_SE`` (one
  standard error), and the accuracy still to be gained likewise;
- **prunes it short of the target** (``pruner: target``, either objective): when even the most it
  can plausibly reach by its last epoch (``pipeline.prediction.reachable``: its best so far
  continued at its mean pace, plus the noise of the accuracies that pace was measured from) is
  below ``train.target_val_acc``, the accuracy the user needs. A search's failing trials are flat
  or slow from their second epoch on, and each would otherwise run all of its epochs.

Before a trial, ``study.EnergyBudget`` does not start one that cannot finish within what is left.
"""
from __future__ import annotations

import lightning.pytorch as pl
import optuna

from pipeline.energy import J_PER_KWH
from pipeline.pareto import noisy_front
from pipeline.prediction import Curve, reachable
from pipeline.training.callbacks import EpochRecorder
from pipeline.tuning.study import STOPPED_FOR_ATTR, completed_points, spent_kwh
from pipeline.uncertainty import binomial_se

# One standard error of what is still to come in a prediction, relative to it: the remaining energy
# and the accuracy still to be gained. Half of it: predictions after the first epochs miss the
# total by under 10 % in the median run but by tens of percent in the worst (benchmarks/prediction.py).
REMAINING_REL_SE = 0.5


class StoppedForBudget(optuna.TrialPruned):
    """A trial ended because its predicted energy would overrun the study's budget."""


class ParetoPruned(optuna.TrialPruned):
    """A trial ended because its predicted final point is dominated beyond the noise."""


class TargetPruned(optuna.TrialPruned):
    """A trial ended because it cannot plausibly reach the target accuracy within its epochs."""


def dominated(predicted: tuple[float, float], noise: tuple[float, float],
              done: list[tuple[float, float, int]]) -> bool:
    """Whether the predicted (accuracy, kWh) point with its (accuracy, kWh) standard errors is
    off the noise-aware front of itself and the completed trials ``done``."""
    points = [predicted, *[(acc, kwh) for acc, kwh, _ in done]]
    errors = [noise, *[(binomial_se(acc, n), 0.0) for acc, _, n in done]]
    return 0 not in noisy_front(points, errors)


def predicted_accuracy(accs: list[float], epochs: int, val_samples: int, fit: bool = True) -> tuple[float, float]:
    """(the accuracy a run is predicted to end at by epoch ``epochs``, its standard error): the
    learning curve's (``Curve``) through ``accs``, never below the best so far (the best so far
    where ``fit`` is False or no curve fits), with the binomial error on the validation split plus
    ``REMAINING_REL_SE`` of the gain still to come."""
    now = max(accs, default=0.0)
    curve = Curve.fit(accs) if fit else None
    final = min(max(now, curve(epochs)), 1.0) if curve is not None else now
    return final, (binomial_se(final, val_samples) or 0.0) + REMAINING_REL_SE * (final - now)


class TrialGuard(pl.Callback):
    """Stops a trial for the budget, prunes it on the Pareto front or short of ``target`` (the
    validation accuracy it must be able to reach; None: no such rule). See the module."""

    def __init__(self, trial: optuna.Trial, budget_kwh: float | None, pareto: bool, warmup_epochs: int,
                 startup_trials: int, val_samples: int, target: float | None = None):
        self.trial, self.budget_kwh, self.pareto, self.target = trial, budget_kwh, pareto, target
        self.warmup_epochs, self.startup_trials, self.val_samples = warmup_epochs, startup_trials, val_samples

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        recorder = next(c for c in trainer.callbacks if isinstance(c, EpochRecorder))
        f = recorder.forecasts[-1]
        if f.after >= f.epochs:  # nothing left to save
            return
        accs = [e.val_acc for e in recorder.epochs if e.val_acc is not None]
        if self.target is not None and f.after >= self.warmup_epochs and len(accs) == len(recorder.epochs):
            last = recorder.plan["max_epochs"]  # not the predicted early stop: that may come later
            most = reachable(accs, last, self.val_samples)
            if most is not None and most < self.target:
                self.trial.set_user_attr(STOPPED_FOR_ATTR, "target")
                raise TargetPruned(f"val/acc {max(accs):.3f} after {f.after} epoch(s), at most {most:.3f} by epoch "
                                   f"{last} (95 %): short of the target {self.target:g}")
        if f.total_j is None:  # nothing measured: no energy to compare
            return
        study = self.trial.study
        # The first trial to complete always may: a study with none has nothing to choose from.
        if self.budget_kwh is not None and completed_points(study):
            left_kwh = self.budget_kwh - spent_kwh(study)
            if f.total_j / J_PER_KWH > left_kwh:
                self.trial.set_user_attr(STOPPED_FOR_ATTR, "budget")
                raise StoppedForBudget(
                    f"predicted {f.total_j:.0f} J after {f.after} epoch(s), {max(left_kwh, 0) * J_PER_KWH:.0f} J "
                    "left of the energy budget")
        if not self.pareto or f.after < max(self.warmup_epochs, 1):
            return
        done = completed_points(study)
        if len(done) < max(self.startup_trials, 1):
            return
        spent_j = sum(e.energy_j or 0.0 for e in recorder.epochs)
        complete = len(accs) == len(recorder.epochs)
        final, se_acc = predicted_accuracy(accs, f.epochs, self.val_samples, fit=complete)
        se_kwh = REMAINING_REL_SE * (f.total_j - spent_j) / J_PER_KWH
        if dominated((final, f.total_j / J_PER_KWH), (se_acc, se_kwh), done):
            self.trial.set_user_attr(STOPPED_FOR_ATTR, "pareto")
            raise ParetoPruned(f"predicted to end at val/acc {final:.3f}, {f.total_j:.0f} J after {f.after} "
                               "epoch(s): dominated beyond the noise by a completed trial")
