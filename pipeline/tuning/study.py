"""Optuna study plumbing: storage, identity, sampler and pruner, energy budget, selection."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import optuna

from pipeline import paths
from pipeline.config import Params

ENERGY_ATTR = "energy_kwh"
INTERRUPTED_ATTR = "interrupted"  # a trial ended by Ctrl-C/SIGTERM: retried on resume, not counted
RETRY_ATTR = "retry_of"
SURPLUS_ATTR = "surplus"  # asked for after the study had its n_trials (concurrent workers): not run


def storage_url(params: Params) -> str:
    url = os.environ.get("OPTUNA_STORAGE") or params.tune.search.storage
    if url:
        return url
    paths.study_dir().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{paths.study_dir() / 'studies.db'}"


def redact(url: str) -> str:
    """A storage URL without its password, fit for logs, tags and reports."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


class StaleTrialCallback:
    """A killed worker's trial, failed by the heartbeat: retried once, and its MLflow run (left
    RUNNING by the dead process) ended KILLED."""

    def __init__(self, tracking=None):
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        self.tracking = tracking

    def __call__(self, study: optuna.Study, trial) -> None:
        self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if self.tracking is not None and run_id:
            from pipeline.tracking import end_dangling_run

            end_dangling_run(self.tracking, run_id, "worker died: trial failed by the storage heartbeat, retried")


def fail_silent_trials(study: optuna.Study, grace_s: float) -> list[int]:
    """Fail (and retry, like stale ones) RUNNING trials that never recorded a heartbeat and
    started more than ``grace_s`` ago: a worker killed between asking for its trial and its
    first heartbeat. Optuna's own ``fail_stale_trials`` only looks at trials with a heartbeat."""
    import datetime

    from sqlalchemy import text

    # Optuna wraps its RDBStorage in a cache; the backend holds the engine (schema of Optuna 5).
    rdb = getattr(study._storage, "_backend", study._storage)
    if not isinstance(rdb, optuna.storages.RDBStorage):
        return []
    storage = study._storage
    with rdb.engine.connect() as con:
        rows = con.execute(text(
            "SELECT t.trial_id, t.datetime_start FROM trials t WHERE t.study_id = :sid AND t.state = 'RUNNING' "
            "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)"),
            {"sid": study._study_id}).fetchall()
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_s)
    failed = []
    for trial_id, started in rows:
        started = datetime.datetime.fromisoformat(str(started)) if not isinstance(started, datetime.datetime) else started
        if started > cutoff:
            continue
        try:
            if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile: alive after all
        frozen = storage.get_trial(trial_id)
        callback = rdb.get_failed_trial_callback()
        if callback is not None:
            callback(study, frozen)
        failed.append(frozen.number)
    return failed


def open_storage(url: str, heartbeat_s: float = 10.0, tracking=None):
    """RDB storage with a heartbeat: a worker killed mid-trial leaves its trial RUNNING only
    until the grace period (3 heartbeats) passes; the trial is then failed and retried once."""
    if url.startswith("sqlite:///"):
        from pipeline.filelock import locked

        with locked(Path(url.removeprefix("sqlite:///")).parent / ".init.lock"):
            return _rdb_storage(url, heartbeat_s, tracking)
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
    if s.pruner == "none" or s.objective != "accuracy":  # Optuna cannot prune multi-objective studies
        return optuna.pruners.NopPruner()
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


class EnergyBudget:
    """Stops the study once its trials together used ``budget_kwh``."""

    def __init__(self, budget_kwh: float | None):
        self.budget_kwh = budget_kwh
        self.exhausted = False

    def reached(self, study: optuna.Study) -> bool:
        return self.budget_kwh is not None and spent_kwh(study) >= self.budget_kwh

    def __call__(self, study: optuna.Study, trial) -> None:
        if self.reached(study):
            self.exhausted = True
            study.stop()


def knee(points: list[tuple[float, float]]) -> int:
    """Index of the Pareto point nearest the ideal (max accuracy, min energy), both axes scaled
    to [0, 1] over the given points; ties go to the lower energy."""
    accs = [p[0] for p in points]
    ens = [p[1] for p in points]

    def scale(v, lo, hi):
        return 0.0 if hi == lo else (v - lo) / (hi - lo)

    def dist(i):
        a = 1 - scale(accs[i], min(accs), max(accs))
        e = scale(ens[i], min(ens), max(ens))
        return (a * a + e * e, ens[i])

    return min(range(len(points)), key=dist)


def select_trial(study: optuna.Study, params: Params) -> tuple[optuna.trial.FrozenTrial, list[optuna.trial.FrozenTrial]]:
    """(chosen trial, Pareto set). Single objective: the best trial. Multi-objective: by
    ``tune.search.select``."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {study.study_name}: no trial completed, nothing to select "
                           f"({len(study.trials)} trials: see their MLflow runs for errors)")
    if len(study.directions) == 1:
        return study.best_trial, [study.best_trial]
    front = sorted(study.best_trials, key=lambda t: t.values[1])
    if params.tune.search.select == "accuracy":
        return max(front, key=lambda t: (t.values[0], -t.values[1])), front
    return front[knee([(t.values[0], t.values[1]) for t in front])], front


def trial_summary(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
            "energy_kwh": t.user_attrs.get(ENERGY_ATTR), "duration_s": t.user_attrs.get("duration_s")}


def write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
