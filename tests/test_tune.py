"""The search stage on tiny studies: trials measured and tracked, pruning, resuming, workers."""
import json

import optuna
import pytest

from pipeline import paths
from pipeline.config import parse_params
from pipeline.data.prepare import prepare, save
from pipeline.tracking import client_for, redact
from pipeline.tuning import study as st
from pipeline.tuning.tune import tune_family

from .conftest import sqlite_count, tiny_raw

TINY_SEARCH = {
    "tune": {
        "search": {"n_trials": 3, "max_epochs": 2, "startup_trials": 1, "warmup_epochs": 0},
        "space": {"train": {"lr": {"low": 0.001, "high": 0.01, "log": True}},
                  "mlp": {"width": [16, 32]}},
    }
}


def tune_params(**overrides):
    raw = tiny_raw()
    raw["tune"] = {"search": dict(TINY_SEARCH["tune"]["search"]), "space": dict(TINY_SEARCH["tune"]["space"])}
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_params(raw)


@pytest.fixture
def prepared(workdir):
    p = prepare(tune_params())
    save(p, "mnist1d")
    return p


def _study(params, prepared):
    return optuna.load_study(study_name=st.study_name(params, "mlp", prepared.card["sha256"]),
                             storage=st.storage_url(params))


def _runs(params, filter_string):
    client, _ = client_for(params.tracking)
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    return client.search_runs([exp.experiment_id], filter_string)


def test_tiny_study_measures_and_tracks_every_trial(prepared, meter):
    """A 3-trial study: each trial's energy and val/acc are those its MLflow run measured; the
    search's energy is their sum; the chosen trial is the most accurate one; the refit of it is
    tracked and saved as the tuned model with the accuracy its run logged."""
    params = tune_params()
    m = tune_family(params, "mlp", meter, prepared)
    assert m["trials"] == 3
    study = _study(params, prepared)
    assert len(study.trials) == 3
    assert all(t.user_attrs["energy_kwh"] > 0 for t in study.trials)
    assert m["search_energy_kwh"] == pytest.approx(sum(t.user_attrs["energy_kwh"] for t in study.trials))
    assert m["search_energy_j"] == pytest.approx(m["search_energy_kwh"] * 3.6e6)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and m["chosen_trial_val_acc"] == max(t.value for t in complete)
    assert study.trials[m["chosen_trial"]].value == m["chosen_trial_val_acc"]

    (parent,) = _runs(params, "tags.role = 'study'")
    trials = _runs(params, "tags.role = 'trial'")
    assert len(trials) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    by_id = {r.info.run_id: r for r in trials}
    for t in study.trials:  # each trial's figures are those of its own run
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.data.metrics["energy/total_j"] == pytest.approx(t.user_attrs["energy_kwh"] * 3.6e6)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert run.data.metrics["final/val_acc"] == pytest.approx(t.value)
    assert {r.data.tags["trial_state"] for r in trials} <= {"COMPLETE", "PRUNED"}
    assert parent.data.metrics["search/energy_j"] == pytest.approx(m["search_energy_j"])
    # the summed energy says how it was measured: the method of its trials, one here
    assert parent.data.tags["energy_method"] == trials[0].data.tags["energy_method"] == meter.method
    assert parent.data.tags["energy_backend"] == "codecarbon"
    (refit,) = _runs(params, "tags.role = 'refit'")
    assert refit.data.tags["variant"] == "tuned"
    assert refit.data.metrics["final/val_acc"] == pytest.approx(m["val_acc"])
    assert refit.data.tags["chosen_trial"] == str(m["chosen_trial"])
    assert (paths.model_dir("mlp", "tuned") / "model.pt").is_file()
    saved = json.loads((paths.model_dir("mlp", "tuned") / "study.json").read_text())
    assert saved["chosen"]["number"] == m["chosen_trial"]
    artifacts = {a.path for a in client_for(params.tracking)[0].list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in artifacts


def test_pruned_trial_keeps_its_energy(prepared, meter):
    # A pruner that always prunes after the first reported epoch.
    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    params = tune_params(**{"tune.search.n_trials": 2})
    import pipeline.tuning.study as study_mod

    orig = study_mod.make_pruner
    study_mod.make_pruner = lambda p: Always()
    try:
        with pytest.raises(RuntimeError, match="no trial completed"):
            tune_family(params, "mlp", meter, prepared)
    finally:
        study_mod.make_pruner = orig
    study = _study(params, prepared)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(t.user_attrs["energy_kwh"] > 0 for t in study.trials)
    runs = _runs(params, "tags.role = 'trial'")
    assert {r.data.tags["trial_state"] for r in runs} == {"PRUNED"}
    assert all(r.info.status == "FINISHED" and r.data.metrics["energy/total_j"] > 0 for r in runs)


def test_resumed_study_keeps_its_trials(prepared, meter):
    first = tune_params(**{"tune.search.n_trials": 2})
    tune_family(first, "mlp", meter, prepared)
    numbers = [t.number for t in _study(first, prepared).trials]
    # Asking for more trials continues the same study (same name) instead of starting over.
    more = tune_params(**{"tune.search.n_trials": 3})
    assert st.study_name(more, "mlp", prepared.card["sha256"]) == st.study_name(first, "mlp", prepared.card["sha256"])
    m = tune_family(more, "mlp", meter, prepared)
    study = _study(more, prepared)
    assert [t.number for t in study.trials][:2] == numbers and len(study.trials) == 3 == m["trials"]
    assert len(_runs(more, "tags.role = 'study'")) == 1  # one parent run across both invocations


def test_energy_budget_stops_the_study(prepared, meter):
    params = tune_params(**{"tune.search.n_trials": 10, "tune.search.energy_budget_kwh": 1e-9})
    m = tune_family(params, "mlp", meter, prepared)
    assert m["trials"] == 1  # the first trial alone spends more than the budget


def test_multi_objective_returns_a_pareto_set(prepared, meter):
    """accuracy+energy: the front reported (its size, study.json's list) is exactly the completed
    trials that no other completed trial beats on both accuracy and energy, and the chosen trial
    is on it."""
    params = tune_params(**{"tune.search.objective": "accuracy+energy"})
    m = tune_family(params, "mlp", meter, prepared)
    study = _study(params, prepared)
    assert len(study.directions) == 2
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    def dominated(a):
        return any(b.values[0] >= a.values[0] and b.values[1] <= a.values[1] and b.values != a.values for b in complete)

    front = {t.number for t in complete if not dominated(t)}
    assert front and m["pareto_size"] == len(front) == len(study.best_trials)
    saved = json.loads((paths.model_dir("mlp", "tuned") / "study.json").read_text())
    assert {t["number"] for t in saved["pareto_front"]} == front == {t.number for t in study.best_trials}
    assert m["chosen_trial"] in front


def test_two_workers_finish_exactly_n_trials(prepared, meter):
    params = tune_params(**{"tune.search.n_trials": 4, "tune.search.n_workers": 2})
    m = tune_family(params, "mlp", meter, prepared)
    study = _study(params, prepared)
    _assert_exactly_n(study, params, 4)
    assert m["trials_counted"] == 4
    # A trial asked for in the race for the last one never ran: reported apart, not as a trial.
    assert m["trials"] == 4 and m["trials_surplus"] == len(study.trials) - 4


def _assert_exactly_n(study, params, n):
    """N counted trials, all finished, each with one finished MLflow run; any other trial is a
    surplus one (asked for in a race, never run, FAIL with the ``surplus`` attribute)."""
    counted = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert st.trials_done(study) == n == len(counted)
    assert all(t.state.is_finished() for t in study.trials)
    assert all(t.state == optuna.trial.TrialState.FAIL and "mlflow_run_id" not in t.user_attrs
               for t in study.trials if t.user_attrs.get("surplus"))
    assert {t.user_attrs["worker"] for t in counted} <= {0, 1}
    runs = _runs(params, "tags.role = 'trial'")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in counted)
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_storage_password_is_redacted():
    assert redact("postgresql://user:s3cret@db.example:5432/optuna") == "postgresql://user:***@db.example:5432/optuna"


PG_URL = "postgresql://postgres:s3cret@127.0.0.1:5432/test"  # trust auth: the password is ignored


def _postgres_or_skip():
    import sqlalchemy as sa

    try:
        with sa.create_engine(PG_URL).connect():
            pass
    except Exception as err:
        pytest.skip(f"no PostgreSQL server answers at 127.0.0.1:5432 ({type(err).__name__})")


@pytest.mark.postgres
def test_two_workers_share_a_study_in_postgresql(prepared, meter, capsys):
    import uuid

    _postgres_or_skip()
    params = tune_params(**{"tune.search.n_trials": 4, "tune.search.n_workers": 2,
                            "tune.search.storage": PG_URL, "tracking.experiment_name": f"pg-{uuid.uuid4().hex[:8]}"})
    name = st.study_name(params, "mlp", prepared.card["sha256"])
    try:
        tune_family(params, "mlp", meter, prepared)
        study = optuna.load_study(study_name=name, storage=PG_URL)
        _assert_exactly_n(study, params, 4)
        # The password never leaves the URL: not in tags, params, files or output.
        (parent,) = _runs(params, "tags.role = 'study'")
        assert parent.data.tags["storage"] == "postgresql://postgres:***@127.0.0.1:5432/test"
        texts = [json.dumps(parent.data.tags), json.dumps(parent.data.params), capsys.readouterr().out,
                 paths.tune_metrics("mlp").read_text(), (paths.model_dir("mlp", "tuned") / "study.json").read_text()]
        assert not any("s3cret" in t for t in texts)
    finally:
        try:
            optuna.delete_study(study_name=name, storage=PG_URL)
        except KeyError:
            pass


def _epochs_logged(db) -> int:
    return sqlite_count(db, "SELECT count(*) FROM metrics WHERE key = 'val/acc'")


@pytest.mark.parametrize("signame", ["SIGTERM"])  # SIGINT: tests/test_interrupts.py, case trial-step
def test_interrupted_study_resumes_with_its_trials(workdir, meter, signame):
    """A signal mid-trial: exit 130, the trial's run KILLED with its energy, the Optuna trial
    marked interrupted; the next run retries that configuration and keeps the count at N."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    raw = tiny_raw(**{"train.max_epochs": 40, "train.early_stopping_patience": 4})
    raw["tune"] = {"search": {**TINY_SEARCH["tune"]["search"], "n_trials": 1, "max_epochs": 40},
                   "space": TINY_SEARCH["tune"]["space"]}
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    data = prepare(params)
    save(data, "mnist1d")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "tune", "--family", "mlp"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _epochs_logged(workdir / "mlruns" / "mlflow.db") < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(getattr(signal, signame))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    [trial] = _study(params, data).trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["interrupted"] is True
    assert trial.user_attrs["energy_kwh"] > 0
    runs = _runs(params, "")
    assert {r.info.status for r in runs} == {"KILLED"}  # the study's run and the trial's run
    killed_trial = next(r for r in runs if r.data.tags.get("role") == "trial")
    assert killed_trial.data.metrics["energy/total_j"] > 0
    assert killed_trial.data.tags["error"] == f"Interrupted: {signame}"

    m = tune_family(params, "mlp", meter)
    study = _study(params, data)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study.trials[1].params == trial.params and study.trials[1].user_attrs["retry_of"] == 0
    assert st.trials_done(study) == 1 and m["trials_complete"] == 1
    assert "RUNNING" not in {r.info.status for r in _runs(params, "")}
    parent = _runs(params, "tags.role = 'study'")[0]
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags


def _running_trials_of(db, pid: int) -> int:
    """RUNNING trials of the process ``pid`` (the objective records it when a trial starts)."""
    return sqlite_count(db, "SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                            f"WHERE t.state = 'RUNNING' AND a.key = 'pid' AND a.value_json = '{pid}'")


@pytest.mark.slow
def test_killed_worker_is_retried_and_two_commands_finish_exactly_n(workdir, meter):
    """Two `tune` commands on one study (two terminals); one is SIGKILLed mid-trial. The other
    fails its trial through the heartbeat, retries it, ends its MLflow run KILLED, and the study
    ends with exactly N counted trials: none doubled, none lost, nothing left RUNNING."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    raw = tiny_raw(**{"train.early_stopping_patience": 0})
    # Trials of 30 epochs (0.5 s or more): the kill, sent as soon as the second command's trial has
    # started (its pid on a RUNNING trial) plus 0.3 s, lands inside that trial, never between two.
    raw["tune"] = {"search": {**TINY_SEARCH["tune"]["search"], "n_trials": 4, "max_epochs": 30, "heartbeat_s": 1,
                              "pruner": "none"},
                   "space": TINY_SEARCH["tune"]["space"]}
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    data = prepare(params)
    save(data, "mnist1d")
    cmd = [sys.executable, "-m", "pipeline", "tune", "--family", "mlp"]
    first = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)  # the first command creates the study and its MLflow run
    second = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = workdir / "optuna" / "studies.db"
    deadline = time.monotonic() + 180
    while not _running_trials_of(db, second.pid) and second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if not _running_trials_of(db, second.pid):
        second.kill()
        first.kill()
        raise AssertionError("the second command should be running a trial:\n" + second.communicate()[0]
                             + "\n---\n" + first.communicate()[0])
    time.sleep(0.3)  # into its trial (its MLflow run is usually open by then)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=30)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out

    study = _study(params, data)
    assert st.trials_done(study) == 4
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
    stale = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert len(stale) == 1
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == stale[0].number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    if stale[0].params:  # killed after sampling: the same configuration is run again
        assert retry[0].params == stale[0].params
    runs = _runs(params, "")
    assert "RUNNING" not in {r.info.status for r in runs}
    killed = [r for r in runs if r.info.status == "KILLED"]
    stale_run = stale[0].user_attrs.get("mlflow_run_id")
    stale_runs = [r for r in runs if r.info.run_id == stale_run]
    # Where the kill landed decides how the dead worker's run ends; every case is recorded.
    if stale_run is None:  # before its run opened (no run), or before the trial recorded it: found by tags
        assert [r.data.tags["trial_number"] for r in killed] in ([], [str(stale[0].number)])
        assert all("heartbeat" in r.data.tags["error"] for r in killed)
    elif stale_runs[0].info.status == "KILLED":  # while its run was open: ended KILLED by the survivor
        assert [r.info.run_id for r in killed] == [stale_run]
        assert "heartbeat" in killed[0].data.tags["error"]
    else:  # after its run ended, before the study recorded the trial: the run says the trial failed
        assert killed == [] and stale_runs[0].info.status == "FINISHED"
        assert stale_runs[0].data.tags["trial_state"] == "FAIL" and "heartbeat" in stale_runs[0].data.tags["error"]
    counted = [r for r in runs if r.data.tags.get("role") == "trial" and r.info.status == "FINISHED"
               and r.data.tags.get("trial_state") != "FAIL"]
    assert len(counted) == 4


@pytest.mark.timeout(60)
def test_a_dead_workers_run_is_ended_even_before_its_trial_knew_it(workdir):
    """A worker killed after creating its trial's MLflow run but before recording the run's id on
    the trial: when the heartbeat fails the trial, the run is found by its study and trial-number
    tags and ended KILLED, not left RUNNING; runs of other trials are left alone."""
    from pipeline.tracking import create_run

    params = tune_params()
    name = "O'Brien's experiment-mlp"  # study names embed the experiment's: quotes included
    study = optuna.create_study(study_name=name)
    trial = study.ask()
    orphan = create_run(params.tracking, "trial-mlp-0", {"study": name, "trial_number": trial.number})
    other = create_run(params.tracking, "trial-mlp-1", {"study": name, "trial_number": trial.number + 1})
    st.StaleTrialCallback(params.tracking)(study, study.trials[0])
    client, _ = client_for(params.tracking)
    run = client.get_run(orphan)
    assert run.info.status == "KILLED"
    assert "heartbeat" in run.data.tags["error"]
    assert client.get_run(other).info.status == "RUNNING"
