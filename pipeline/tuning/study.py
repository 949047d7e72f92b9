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


def open_storage(url: str):
    """RDB storage with a heartbeat: a worker killed mid-trial leaves its trial RUNNING only
    until the grace period passes; the trial is then failed and retried once."""
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=10,
        grace_period=30,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
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
                                              "warmup_epochs", "max_epochs")},
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
