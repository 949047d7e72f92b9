"""Optuna study plumbing: storage, identity, sampler and pruner, energy budget, selection."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import optuna

from pipeline import interrupts, paths
from pipeline.config import Params
from pipeline.energy import J_PER_KWH
from pipeline.errors import NothingToSelect
from pipeline.pareto import knee, pareto_front

ENERGY_ATTR = "energy_kwh"
METHOD_ATTR = "energy_method"  # how the trial's energy was measured (EnergyReading.method)
BACKEND_ATTR = "energy_backend"
INTERRUPTED_ATTR = "interrupted"  # a trial ended by Ctrl-C/SIGTERM: retried on resume, not counted
RETRY_ATTR = "retry_of"
STOPPED_FOR_ATTR = "stopped_for"  # why a pruned trial ended: the pruner's name, pareto, target or budget
SURPLUS_ATTR = "surplus"  # asked for after the study had its n_trials (concurrent workers): not run


def storage_url(params: Params) -> str:
    url = os.environ.get("OPTUNA_STORAGE") or params.tune.search.storage
    if url:
        return url
    paths.study_dir().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{paths.study_dir() / 'studies.db'}"


class StaleTrialCallback:
    """A killed worker's trial, failed by the heartbeat: retried once, and its MLflow run (left
    RUNNING by the dead process) ended KILLED."""

    def __init__(self, tracking=None):
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        self.tracking = tracking

    def __call__(self, study: optuna.Study, trial) -> None:
        self.retry(study, trial)
        if self.tracking is None:
            return
        from pipeline.tracking import end_dangling_run, running_runs_tagged, tag_run

        why = "worker died: trial failed by the storage heartbeat, retried"
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id:
            # Killed between creating its run and recording the run's id on the trial: the run is
            # found by the study and trial number it was tagged with.
            for dangling in running_runs_tagged(self.tracking, {"study": study.study_name, "trial_number": trial.number}):
                end_dangling_run(self.tracking, dangling, why)
            return
        if not end_dangling_run(self.tracking, run_id, why):
            # Its run had ended: the worker died after it and before the study recorded the
            # trial. The run's figures stand; the trial does not count, and was retried.
            tag_run(self.tracking, run_id, {
                "trial_state": "FAIL",
                "error": "worker died after this run ended, before the study recorded the trial: failed by the "
                         "storage heartbeat, retried"})


def fail_silent_trials(study: optuna.Study, grace_s: float) -> list[int]:
    """Fail (and retry, like stale ones) RUNNING trials that never recorded a heartbeat and
    started more than ``grace_s`` ago: a worker killed between asking for its trial and its
    first heartbeat. Optuna's own ``fail_stale_trials`` only looks at trials with a heartbeat.
    Optuna's public API cannot find such trials: the private parts used are in ``private_api``."""
    import datetime

    from pipeline import private_api

    storage = private_api.study_storage(study)
    rdb = private_api.rdb_storage(storage)
    if rdb is None:
        return []
    study_id = storage.get_study_id_from_name(study.study_name)
    silent = private_api.trials_without_heartbeat(rdb, study_id)
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_s)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        if trial_id not in silent or t.datetime_start is None or t.datetime_start > cutoff:
            continue
        try:
            if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile: alive after all
        frozen = storage.get_trial(trial_id)
        callback = rdb.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(study, frozen)
        failed.append(frozen.number)
    return failed


def open_storage(url: str, heartbeat_s: float = 10.0, tracking=None):
    """RDB storage with a heartbeat: a worker killed mid-trial leaves its trial RUNNING only
    until the grace period (3 heartbeats) passes; the trial is then failed and retried once."""
    interrupts.defer()  # from the first store on, a signal ends what was started, at a safe point
    with paths.store_lock(url):  # creating the schema: one process at a time
        return _rdb_storage(url, heartbeat_s, tracking)


def _rdb_storage(url: str, heartbeat_s: float, tracking):
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=max(1, round(heartbeat_s)),
        grace_period=max(3, round(3 * heartbeat_s)),
        heartbeat_stale_trial_callback=StaleTrialCallback(tracking),
        engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else {"connect_args": {"timeout": 60}},
    )


def study_name(params: Params, family: str, data_hash: str) -> str:
    """Same search (space, objective, sampler, pruner, per-trial epochs, base params, data) ->
    same name, so an interrupted study is resumed; any change starts a new study."""
    s = params.tune.search
    identity = {
        "family": family,
        "space": {"train": _dump(params.tune.space.train), "model": _dump(params.tune.space.for_family(family))},
        "search": {k: getattr(s, k) for k in ("objective", "sampler", "pruner", "startup_trials",
                                              "warmup_epochs", "max_epochs", "enqueue_baseline")},
        "train": params.train.model_dump(),
        "model": params.models.for_family(family).model_dump(),
        "seed": params.base.seed,
        "data": data_hash,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{params.tracking.experiment_name}-{family}-{digest}"


def _dump(space: dict) -> dict:
    return {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in space.items()}


def directions(params: Params) -> list[str]:
    return ["maximize"] if params.tune.search.objective == "accuracy" else ["maximize", "minimize"]


def make_sampler(params: Params, worker: int = 0):
    s = params.tune.search
    seed = params.base.seed + worker  # each worker its own stream, reproducible
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, s.startup_trials))


def make_pruner(params: Params):
    s = params.tune.search
    # Optuna cannot prune multi-objective studies; the target rule is the trial guard's, not Optuna's.
    if s.pruner in ("none", "target") or s.objective != "accuracy":
        return optuna.pruners.NopPruner()
    if s.pruner == "asha":  # successive halving: at 1, 3, 9... epochs only the best third goes on
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, s.warmup_epochs), reduction_factor=3)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=s.max_epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials, n_warmup_steps=s.warmup_epochs)


def load_study(params: Params, family: str, data_hash: str, storage, worker: int = 0) -> optuna.Study:
    return optuna.create_study(
        study_name=study_name(params, family, data_hash),
        storage=storage,
        directions=directions(params),
        sampler=make_sampler(params, worker),
        pruner=make_pruner(params),
        load_if_exists=True,
    )


def spent_kwh(study: optuna.Study) -> float:
    """Energy of every trial so far, whatever its state (the cost of a search includes failures)."""
    return sum(t.user_attrs.get(ENERGY_ATTR) or 0.0 for t in study.get_trials(deepcopy=False))


def spent_measured_by(trials) -> dict[str, str]:
    """How the energy ``spent_kwh`` sums over these trials (all of a study's) was measured: their
    distinct methods and backends, joined by ``+`` (``pipeline.uncertainty.factors`` reads a
    sum's method so), as the tags ``energy_method`` and ``energy_backend``; empty when no trial
    measured any."""
    measured = [t for t in trials if t.user_attrs.get(ENERGY_ATTR) is not None]
    out = {}
    for tag, attr in (("energy_method", METHOD_ATTR), ("energy_backend", BACKEND_ATTR)):
        found = sorted({t.user_attrs[attr] for t in measured if t.user_attrs.get(attr)})
        if found:
            out[tag] = "+".join(found)
    return out


class SurplusTrial(Exception):
    """Another worker took the last of the study's ``n_trials`` first."""


def _counted(t, replaced: set) -> bool:
    return (t.state != optuna.trial.TrialState.WAITING
            and not t.user_attrs.get(INTERRUPTED_ATTR) and not t.user_attrs.get(SURPLUS_ATTR)
            and not (t.state == optuna.trial.TrialState.FAIL and t.number in replaced))


def _replaced(trials) -> set:
    return {t.user_attrs.get(RETRY_ATTR) for t in trials} | {t.system_attrs.get("failed_trial") for t in trials}


def claim(study: optuna.Study, trial_number: int, n_trials: int) -> None:
    """Raise :class:`SurplusTrial` if ``trial_number`` is not among the first ``n_trials``
    counted trials. Workers check the count before asking for a trial, but two may ask at once;
    trial numbers are given out in order by the storage, so the later one yields, in every
    interleaving, and the study ends with exactly ``n_trials`` counted trials."""
    trials = study.get_trials(deepcopy=False)
    replaced = _replaced(trials)
    ahead = sum(_counted(t, replaced) for t in trials if t.number < trial_number)
    if ahead >= n_trials:
        raise SurplusTrial(f"trial {trial_number}: the study already has its {n_trials} trials")


def ran(trials) -> list:
    """The trials that ran: without the surplus ones (asked for by a worker in a race for the
    study's last trial, never run or measured, marked FAIL by Optuna)."""
    return [t for t in trials if not t.user_attrs.get(SURPLUS_ATTR)]


def trials_done(study: optuna.Study) -> int:
    """Trials that count against ``n_trials``: finished or running, not waiting in the queue,
    and not replaced by a retry (interrupted trials, and trials of killed workers that the
    heartbeat failed): N asked give N, none doubled or lost."""
    trials = study.get_trials(deepcopy=False)
    replaced = _replaced(trials)
    return sum(_counted(t, replaced) for t in trials)


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Enqueue once more the configuration of every interrupted trial not yet retried; returns
    their numbers. The interrupted trial itself stays FAIL (with its measured energy)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_ATTR) for t in trials}
    numbers = []
    for t in trials:
        if t.user_attrs.get(INTERRUPTED_ATTR) and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: t.number})
            numbers.append(t.number)
    return numbers


def completed_points(study: optuna.Study) -> list[tuple[float, float, int]]:
    """(val/acc, energy kWh, validation samples) of the study's completed trials."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        energy = t.user_attrs.get(ENERGY_ATTR)
        if t.values and energy:
            out.append((t.values[0], energy, t.user_attrs.get("val_samples") or 0))
    return out


class EnergyBudget:
    """The study's energy budget, ``budget_kwh`` for its trials together. ``reached``: before a
    trial, whether none can finish within what is left: the budget is spent, or what is left is
    less than the cheapest completed trial used; ``why`` says which. As an Optuna callback it
    stops the study after a trial once that holds. (During a trial, ``guard.TrialGuard`` stops it
    when its predicted energy overruns what is left.)"""

    def __init__(self, budget_kwh: float | None):
        self.budget_kwh = budget_kwh
        self.exhausted = False
        self.why: str | None = None

    def reached(self, study: optuna.Study) -> bool:
        if self.budget_kwh is None:
            return False
        left = self.budget_kwh - spent_kwh(study)
        cheapest = min((kwh for _, kwh, _ in completed_points(study)), default=None)
        if left <= 0:
            self.why = f"the energy budget ({self.budget_kwh * J_PER_KWH:.0f} J) is spent"
        elif cheapest is not None and cheapest > left:
            self.why = (f"{left * J_PER_KWH:.0f} J left of the energy budget, less than the cheapest completed "
                        f"trial used ({cheapest * J_PER_KWH:.0f} J): no further trial can finish within it")
        else:
            return False
        return True

    def __call__(self, study: optuna.Study, trial) -> None:
        if self.reached(study):
            self.exhausted = True
            study.stop()


def select_trial(study: optuna.Study, params: Params) -> tuple[optuna.trial.FrozenTrial, list[optuna.trial.FrozenTrial]]:
    """(chosen trial, Pareto set). Single objective: the best trial. Multi-objective (val/acc
    maximised, energy minimised): the front of the completed trials and, by
    ``tune.search.select``, its most accurate trial or its knee, both as ``pipeline.pareto``
    defines them for the report too (log-scaled energy). The front is sorted by energy."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise NothingToSelect(_why_none_completed(study, params))
    if len(study.directions) == 1:
        return study.best_trial, [study.best_trial]
    if list(study.directions) != [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]:
        raise ValueError(f"study {study.study_name}: directions {study.directions}; expected (maximize val/acc, "
                         "minimize energy)")
    points = [(t.values[0], t.values[1]) for t in complete]
    on_front = pareto_front(points)
    if not on_front:
        raise RuntimeError(f"study {study.study_name}: no completed trial has finite objective values")
    front = [complete[i] for i in on_front]
    if params.tune.search.select == "accuracy":
        return max(front, key=lambda t: (t.values[0], -t.values[1])), front
    return complete[knee(points, on_front)], front


def _why_none_completed(study: optuna.Study, params: Params) -> str:
    from collections import Counter

    trials = ran(study.get_trials(deepcopy=False))
    states = ", ".join(f"{n} {s}" for s, n in sorted(Counter(t.state.name.lower() for t in trials).items()))
    why = f"study {study.study_name}: no trial completed, nothing to select ({len(trials)} trials: {states or 'none'})"
    for_target = sum(t.user_attrs.get(STOPPED_FOR_ATTR) == "target" for t in trials)
    if for_target:
        s = params.tune.search
        why += (f"; {for_target} could not reach train.target_val_acc {params.train.target_val_acc:g} within "
                f"{s.max_epochs} epochs (tune.search.max_epochs): lower the target, raise the epochs or widen "
                "tune.space, or set tune.search.pruner to another pruner")
    return why + ". The study is kept: running the stage again with more tune.search.n_trials continues it"


def trial_summary(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
            "energy_kwh": t.user_attrs.get(ENERGY_ATTR), "duration_s": t.user_attrs.get("duration_s")}


write_json = paths.write_json  # tune.py's name for the one JSON writer (study.json)
