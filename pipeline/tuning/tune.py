"""The ``tune`` stage: an Optuna study per family, then a refit of the chosen trial.

The study lives in persistent storage (SQLite in the project by default, PostgreSQL for workers
on several machines) and is loaded if it exists, so an interrupted stage resumes it. Its parent
MLflow run carries the search's settings, its total energy and emissions (failed and pruned
trials included) and Optuna's plots; each trial is a nested run. ``tune.search.n_workers``
processes share the study; each measures its own trials in CodeCarbon's process mode.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from pipeline import interrupts, paths
from pipeline.compute import share_threads
from pipeline.config import Params
from pipeline.data.prepare import Prepared, load_prepared
from pipeline.energy import J_PER_KWH, EnergyMeter
from pipeline.models.factory import build_model
from pipeline.tracking import base_tags, client_for, create_run, redact, tracked_run
from pipeline.training.train import export_run, fit, model_spec, write_metrics
from pipeline.tuning import study as st
from pipeline.tuning.objective import Objective
from pipeline.tuning.space import baseline_point, split_params

log = logging.getLogger(__name__)
# How long an interrupted command waits for its worker processes to end their trials.
WORKER_EXIT_S = 8
# How often the command looks again at trials still running in other workers, waiting for them.
WAIT_POLL_S = 0.5


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our one line per trial replaces its INFO lines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*quantiles select the same set of trials.*")


def _finished(study) -> int:
    return sum(t.state.is_finished() for t in st.ran(study.get_trials(deepcopy=False))) if study else 0


def run_worker(params: Params, family: str, url: str, worker: int, n_workers: int,
               prepared: Prepared | None = None, meter: EnergyMeter | None = None, progress=None,
               wait_for_others: bool = False) -> None:
    """Run trials of the family's study in this process until the study holds
    ``tune.search.n_trials`` counted trials (whoever ran them: other workers, other machines),
    the timeout passes or the energy budget is spent. ``wait_for_others``: then wait for trials
    still running elsewhere, and run again any whose worker died."""
    import optuna

    _quiet_optuna()
    share_threads(params.train.threads, beside=n_workers)  # the other workers are starting too
    meter = (meter or EnergyMeter(params.energy)).prewarm()
    prepared = prepared or load_prepared(params.data.dataset)

    search = params.tune.search
    storage = st.open_storage(url, search.heartbeat_s, params.tracking)
    study = st.load_study(params, family, prepared.card["sha256"], storage, worker)
    budget = st.EnergyBudget(search.energy_budget_kwh)
    objective = Objective(params, family, prepared, meter, study.user_attrs["mlflow_parent_run_id"],
                          study.study_name, worker, echo=lambda m: print(m, flush=True), n_trials=search.n_trials)
    callbacks = [budget]
    if progress is not None:
        callbacks.append(lambda s, t: progress(_finished(s)))
    deadline = None if search.timeout_s is None else time.monotonic() + search.timeout_s

    def time_left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    while True:
        while st.trials_done(study) < search.n_trials and not budget.reached(study):
            left = time_left()
            if left is not None and left <= 0:
                return
            interrupts.check()
            # One trial at a time, so the count is checked against the shared study before each.
            study.optimize(objective, n_trials=1, timeout=left, callbacks=callbacks,
                           catch=(Exception,), gc_after_trial=False)
        if budget.reached(study):
            print(f"[{family}] {budget.why}", flush=True)
            return
        if not wait_for_others or (time_left() is not None and time_left() <= 0):
            return
        # Trials still running elsewhere finish, or go stale (their worker died): the heartbeat
        # fails those and queues them again, and the loop above runs them here.
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            return
        # Polled, not slept for a whole heartbeat: the search ends as soon as the last trial does.
        interrupts.sleep(min(WAIT_POLL_S, search.heartbeat_s))
        optuna.storages.fail_stale_trials(study)
        st.fail_silent_trials(study, grace_s=3 * search.heartbeat_s)


def start_workers(params: Params, family: str, url: str, n_workers: int, folder: Path) -> list[subprocess.Popen]:
    """Workers 1 .. n_workers - 1 of a search, each the command ``python -m pipeline tune-worker``:
    a pipeline command like any other, so that where a warm server runs (``pipeline.warm``) each
    is a fork of it with the libraries imported, not a fresh interpreter importing them (a
    spawned process took seconds of CPU to import, beside the trials being measured). What a
    worker needs travels in a file only this user can read (the storage URL may hold a password,
    which a command line would show to every user of the machine): the params as plain data,
    validated again in the worker, which also registers families named by import path there."""
    job = folder / "search-worker.json"
    fd = os.open(job, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"params": params.model_dump(mode="json"), "family": family, "storage": url,
                   "n_workers": n_workers}, f)
    return [subprocess.Popen([sys.executable, "-m", "pipeline", "tune-worker", str(job), "--worker", str(i)])
            for i in range(1, n_workers)]


def worker_command(job: Path, worker: int) -> None:
    """The ``tune-worker`` command: run worker ``worker`` of the search that ``job`` describes."""
    from pipeline.config import ParamsError, parse_params

    try:
        spec = json.loads(job.read_text())
        raw, family, url, n_workers = spec["params"], spec["family"], spec["storage"], int(spec["n_workers"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ParamsError(f"{job}: not a search worker file ({type(err).__name__}: {err}); the tune command "
                          f"writes one for each worker it starts (tune.search.n_workers)") from None
    run_worker(parse_params(raw, source=str(job)), family, url, worker, n_workers)


def _save_plots(study, multi: bool, out: Path) -> list[Path]:
    """Optuna's own plots (matplotlib backend, no network). Skipped where Optuna cannot draw
    them (e.g. importances need two finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    out.mkdir(parents=True, exist_ok=True)
    target = (lambda t: t.values[0]) if multi else None
    jobs = {"optimization_history": lambda: ov.plot_optimization_history(study, target=target, target_name="val/acc"),
            "param_importances": lambda: ov.plot_param_importances(study, target=target, target_name="val/acc")}
    if multi:
        jobs["pareto_front"] = lambda: ov.plot_pareto_front(study, target_names=["val/acc", "energy (kWh)"])
    saved = []
    for name, draw in jobs.items():
        try:
            ax = draw()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=100)
            plt.close(fig)
            saved.append(out / f"{name}.png")
        except Exception as err:
            log.info("plot %s skipped: %s", name, err)
    return saved


def _parent_lock(url: str) -> contextlib.AbstractContextManager:
    """Held while a command finds or makes the study's MLflow run: a file lock beside a SQLite
    study storage, an advisory lock in a PostgreSQL one (commands on several machines starting
    one study at once share one parent run)."""
    return paths.store_lock(url, ".parent-run.lock")


def _parent_run_id(params: Params, study) -> str | None:
    """The study's MLflow run, if it exists in this store (a resumed study keeps its run)."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if not run_id:
        return None
    client, _ = client_for(params.tracking)
    try:
        client.get_run(run_id)
        return run_id
    except Exception:
        return None


def _pruning(search, multi: bool) -> str:
    """What prunes this study's trials, for its run's tags."""
    budget = ("; any trial predicted to overrun the energy budget is stopped (pipeline.tuning.guard)"
              if search.energy_budget_kwh is not None else "")
    if search.pruner == "none":
        return "none" + budget
    parts = []
    if search.pruner == "target":
        parts.append("target: a trial that cannot plausibly reach train.target_val_acc within its epochs "
                     "(pipeline.tuning.guard)")
    if multi:
        parts.append("pareto: a trial whose predicted final (val/acc, energy) is dominated beyond the noise by a "
                     "completed trial (pipeline.tuning.guard; Optuna's pruners cannot prune two objectives)")
    elif search.pruner != "target":
        parts.append(f"{search.pruner} via optuna-integration's PyTorchLightningPruningCallback on val/acc")
    return "; ".join(parts) + budget


def tune_family(params: Params, family: str, meter: EnergyMeter | None = None,
                prepared: Prepared | None = None) -> dict:
    import optuna

    _quiet_optuna()
    meter = (meter or EnergyMeter(params.energy)).prewarm()
    prepared = prepared or load_prepared(params.data.dataset)
    card = prepared.card
    build_model(model_spec(params, family, prepared))  # a family that cannot build fails before any store opens
    search = params.tune.search
    url = st.storage_url(params)
    storage = st.open_storage(url, search.heartbeat_s, params.tracking)
    study = st.load_study(params, family, card["sha256"], storage)
    multi = search.objective != "accuracy"
    tags = {**base_tags("tune", family, card), "role": "study", "study": study.study_name,
            "storage": redact(url), "objective": search.objective,
            "pruning": _pruning(search, multi)}
    t0 = time.perf_counter()
    with _parent_lock(url):  # two commands starting one study at once share one parent run
        parent_id = _parent_run_id(params, study)
        if parent_id is None:
            parent_id = create_run(params.tracking, f"tune-{family}", tags)
            study.set_user_attr("mlflow_parent_run_id", parent_id)
    with tracked_run(params.tracking, f"tune-{family}", tags, run_id=parent_id) as parent:
        # Params are fixed for a run's life: log what defines the study; the budget may grow on
        # a resumed study, so it goes in tags.
        budget = {"n_trials", "timeout_s", "energy_budget_kwh", "n_workers", "storage", "heartbeat_s"}
        if not parent.has_params():
            parent.log_params({"search": search.model_dump(exclude=budget),
                               "space": {"train": st._dump(params.tune.space.train),
                                         "model": st._dump(params.tune.space.for_family(family))}})
        parent.set_tags({f"budget.{k}": getattr(search, k) for k in sorted(budget - {"storage"})})
        optuna.storages.fail_stale_trials(study)
        if search.enqueue_baseline and not study.get_trials(deepcopy=False):
            point = baseline_point(params, family)
            if point:  # a new study starts from the known-good configuration of params.yaml
                study.enqueue_trial(point, user_attrs={"origin": "params.yaml baseline"}, skip_if_exists=True)
        retried = st.requeue_interrupted(study)
        if retried:
            print(f"[{family}] interrupted trial(s) {retried} queued again", flush=True)
        done = st.trials_done(study)
        remaining = max(0, search.n_trials - done)
        print(f"[{family}] study {study.study_name} ({redact(url)}): {done} trials done, "
              f"{remaining} to run on {search.n_workers} worker(s)", flush=True)
        if remaining or study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            n_workers = max(1, min(search.n_workers, remaining))
            bar = None
            if sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(total=search.n_trials, initial=done, desc=f"tune {family}", unit="trial")
            progress = (lambda n: (setattr(bar, "n", n), bar.refresh())) if bar else None
            with tempfile.TemporaryDirectory(prefix="search-") as folder:
                procs = start_workers(params, family, url, n_workers, Path(folder))
                try:
                    run_worker(params, family, url, 0, n_workers, prepared, meter, progress, wait_for_others=True)
                except BaseException:
                    for p in procs:  # SIGTERM: each worker ends its trial as interrupted, then exits
                        if p.poll() is None:
                            p.terminate()
                    for p in procs:
                        try:
                            p.wait(WORKER_EXIT_S)
                        except subprocess.TimeoutExpired:  # no safe point in time: its trial goes stale, is retried
                            log.warning("search worker %s did not stop within %d s: killed", p.pid, WORKER_EXIT_S)
                            p.kill()
                    raise
                finally:
                    for p in procs:
                        p.wait()
                    if bar:
                        bar.close()
            failed_workers = [p.returncode for p in procs if p.returncode]
            if failed_workers:
                log.warning("%d search worker(s) exited with an error: %s", len(failed_workers), failed_workers)

        every = study.get_trials(deepcopy=False)
        trials = st.ran(every)  # a surplus trial (a race between workers) never ran: counted apart
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
        spent_kwh = st.spent_kwh(study)
        emissions = sum(t.user_attrs.get("emissions_kg") or 0.0 for t in trials)
        parent.log_metrics({"search/energy_kwh": spent_kwh, "search/energy_j": spent_kwh * J_PER_KWH,
                            "search/emissions_kg": emissions, **{f"search/trials_{k}": v for k, v in counts.items()}})
        parent.set_tags(st.spent_measured_by(every))  # the trials spent_kwh sums
        chosen, front = st.select_trial(study, params)
        train_over, model_over = split_params(chosen.params)
        # Tags, not params: a resumed study reuses this run and its best trial may change.
        parent.set_tags({f"best.{k}": v for k, v in chosen.params.items()})
        parent.log_metrics({"best/val_acc": chosen.values[0], "best/trial": chosen.number})

        # Refit the chosen configuration with the full training budget, as the tuned model.
        train_cfg = type(params.train).model_validate({**params.train.model_dump(), **train_over})
        hparams = {**params.models.for_family(family).model_dump(), **model_over}
        refit_tags = {**base_tags("train", family, card), "variant": paths.TUNED, "role": "refit",
                      "mlflow.parentRunId": parent.run_id, "study": study.study_name, "chosen_trial": chosen.number}
        with tracked_run(params.tracking, f"refit-{family}", refit_tags) as refit:
            result = fit(params, family, prepared, meter, refit, paths.model_dir(family, paths.TUNED),
                         train_cfg=train_cfg, hparams=hparams)
            export_run(result, refit, family, paths.TUNED, card,
                       extra={"study": study.study_name, "chosen_trial": chosen.number, "params": chosen.params})

        out = paths.model_dir(family, paths.TUNED)
        st.write_json({"study": study.study_name, "storage": redact(url), "objective": search.objective,
                       "chosen": st.trial_summary(chosen), "pareto_front": [st.trial_summary(t) for t in front],
                       "trials": [st.trial_summary(t) for t in trials]}, out / "study.json")
        for png in _save_plots(study, multi, out / "plots"):
            parent.log_artifact(png, "plots")
        parent.log_artifact(out / "study.json")

        refit_m = result.metrics
        metrics = {
            "objective": search.objective,
            "trials": len(trials), "trials_complete": counts["complete"], "trials_pruned": counts["pruned"],
            "trials_failed": counts["fail"],
            **{f"trials_stopped_for_{why}": sum(t.user_attrs.get(st.STOPPED_FOR_ATTR) == why for t in trials)
               for why in ("budget", "pareto", "target")},
            "trials_interrupted": sum(bool(t.user_attrs.get(st.INTERRUPTED_ATTR)) for t in trials),
            "trials_counted": st.trials_done(study), "trials_surplus": len(every) - len(trials),
            "search_energy_j": spent_kwh * J_PER_KWH, "search_energy_kwh": spent_kwh,
            "search_emissions_kg": emissions,
            "stage_duration_s": time.perf_counter() - t0,
            "chosen_trial": chosen.number, "chosen_trial_val_acc": chosen.values[0],
            "pareto_size": len(front),
            **{f"best.{k}": v for k, v in chosen.params.items()},
            # The refit of the chosen trial, under the train stage's names, so both compare alike.
            **refit_m,
        }
        if multi:
            metrics["chosen_trial_energy_kwh"] = chosen.values[1]
        metrics = {k: v for k, v in metrics.items() if v is not None}
        write_metrics(metrics, paths.tune_metrics(family))
    return metrics
