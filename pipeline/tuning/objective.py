"""One trial = one measured, tracked training run (a nested MLflow run under the study's run).

Every trial's energy is measured on its own, from its start to its end, and stored on the trial
(``energy_kwh`` user attribute) and its MLflow run, whether it completes, is pruned or fails.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import optuna
from optuna_integration import PyTorchLightningPruningCallback

from pipeline import interrupts
from pipeline.config import Params
from pipeline.data.prepare import Prepared
from pipeline.energy import EnergyMeter
from pipeline.tracking import base_tags, tracked_run
from pipeline.training.train import FitResult, fit
from pipeline.tuning.guard import StoppedForBudget, TrialGuard
from pipeline.tuning.space import sample
from pipeline.tuning.study import (
    BACKEND_ATTR,
    ENERGY_ATTR,
    INTERRUPTED_ATTR,
    METHOD_ATTR,
    STOPPED_FOR_ATTR,
    SURPLUS_ATTR,
    SurplusTrial,
    claim,
)


class Objective:
    def __init__(self, params: Params, family: str, prepared: Prepared, meter: EnergyMeter,
                 parent_run_id: str, study_name: str, worker: int = 0, echo=print, callbacks=(),
                 n_trials: int | None = None):
        self.params, self.family, self.prepared, self.meter = params, family, prepared, meter
        self.parent_run_id, self.study_name, self.worker = parent_run_id, study_name, worker
        self.multi = params.tune.search.objective != "accuracy"
        self.echo = echo
        self.callbacks = list(callbacks)  # extra Lightning callbacks for every trial
        self.n_trials = n_trials  # the study's total, shared with other workers (None: no limit)
        self.val_samples = int(prepared.card["num_samples"]["val"])

    def _pruning_callback(self, trial):
        # optuna-integration's callback imports lightning.pytorch: the same package as our Trainer.
        return PyTorchLightningPruningCallback(trial, monitor="val/acc")

    def __call__(self, trial: optuna.Trial):
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            # Wherever in the trial the interrupt was raised (its run's end included), Optuna marks
            # the trial FAIL; this mark lets a resumed study retry it and not count it.
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise

    def _run(self, trial: optuna.Trial):
        interrupts.check()  # a signal while Optuna created the trial: end it here, marked interrupted
        if self.n_trials is not None:
            try:
                claim(trial.study, trial.number, self.n_trials)
            except SurplusTrial:
                trial.set_user_attr(SURPLUS_ATTR, True)  # not run, not counted: Optuna marks it FAIL
                raise
        train_cfg, hparams = sample(trial, self.params, self.family, self.params.tune.search.max_epochs)
        # Which process runs it, from its start: a trial left RUNNING by a dead worker says whose it was.
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("pid", os.getpid())
        tags = {
            **base_tags("tune", self.family, self.prepared.card),
            "mlflow.parentRunId": self.parent_run_id,
            "role": "trial",
            "study": self.study_name,
            "trial_number": trial.number,
            "worker": self.worker,
            "energy_attribution": "process: this worker's own CPU load (CodeCarbon process mode)",
        }
        result = FitResult()
        state = "FAILED"
        t0 = time.perf_counter()
        search = self.params.tune.search
        guard = TrialGuard(trial, search.energy_budget_kwh, pareto=self.multi and search.pruner != "none",
                           warmup_epochs=search.warmup_epochs, startup_trials=search.startup_trials,
                           val_samples=self.val_samples,
                           target=self.params.train.target_val_acc if search.pruner == "target" else None)
        callbacks = [*self.callbacks, guard, *([] if self.multi else [self._pruning_callback(trial)])]
        with tracked_run(self.params.tracking, f"trial-{self.family}-{trial.number}", tags,
                         finished_on=(optuna.TrialPruned,)) as run:
            # Now, not at the end: if this process dies, whoever fails the trial ends its run.
            trial.set_user_attr("mlflow_run_id", run.run_id)
            try:
                with tempfile.TemporaryDirectory(prefix="trial-") as tmp:
                    fit(self.params, self.family, self.prepared, self.meter, run, Path(tmp),
                        train_cfg=train_cfg, hparams=hparams, extra_callbacks=callbacks, result=result)
                state = "COMPLETE"
            except optuna.TrialPruned as why:
                state = "STOPPED_FOR_BUDGET" if isinstance(why, StoppedForBudget) else "PRUNED"
                if str(why):
                    self.echo(f"[{self.family}] trial {trial.number}: {why}")
                trial.set_user_attr(STOPPED_FOR_ATTR, trial.user_attrs.get(STOPPED_FOR_ATTR) or search.pruner)
                raise
            except KeyboardInterrupt:
                state = "INTERRUPTED"
                raise
            finally:
                energy = result.energy
                trial.set_user_attr("duration_s", time.perf_counter() - t0)
                trial.set_user_attr("val_samples", self.val_samples)
                if energy is not None and energy.energy_kwh is not None:
                    trial.set_user_attr(ENERGY_ATTR, energy.energy_kwh)
                    trial.set_user_attr("emissions_kg", energy.emissions_kg)
                    trial.set_user_attr(METHOD_ATTR, energy.method)
                    trial.set_user_attr(BACKEND_ATTR, energy.backend)
                run.set_tags({"trial_state": state})
                acc = result.metrics.get("val_acc", max((r.get("val/acc", 0) for r in result.history), default=None))
                joules = "n/a" if energy is None or energy.energy_j is None else f"{energy.energy_j:.1f} J"
                self.echo(f"[{self.family}] trial {trial.number} {state}: val/acc "
                          f"{'n/a' if acc is None else f'{acc:.4f}'}, {joules}, "
                          f"{len(result.history)} epochs, {trial.params}")
        val_acc = result.metrics["val_acc"]
        if self.multi:
            if result.energy.energy_kwh is None:
                raise RuntimeError("energy measurement unavailable: cannot minimise energy")
            return val_acc, result.energy.energy_kwh
        return val_acc
