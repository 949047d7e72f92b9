"""Every private use of a library (pipeline/private_api.py), on the real libraries:
these fail when an installed version changes one of them, before a stage does."""
from __future__ import annotations

import warnings

import optuna
import pytest
import sqlalchemy

from pipeline import private_api
from pipeline.config import EnergyCfg
from pipeline.energy import describe_method
from pipeline.tuning import study as st

CPU_MODES = {"intel_rapl", "intel_power_gadget", "windows_emi", "cpu_load", "constant"}
# Trials asked for by hand (not through optimize) in a storage with a heartbeat: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")


def test_the_installed_versions_are_the_checked_ones():
    """On an upgrade: run this file, then update ``private_api.CHECKED`` (and its docstring)."""
    import codecarbon
    import lightning

    installed = {"optuna": optuna.__version__, "codecarbon": codecarbon.__version__, "lightning": lightning.__version__}
    assert installed == private_api.CHECKED


# ---------------------------------------------------------------- Optuna

@pytest.fixture
def rdb(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'studies.db'}", heartbeat_interval=60,
                                          grace_period=180)


def test_a_study_s_storage_and_the_rdb_storage_behind_its_cache(rdb):
    study = optuna.create_study(storage=rdb, directions=["maximize", "minimize"])
    storage = private_api.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage is not rdb  # Optuna wraps it in its cache...
    assert private_api.rdb_storage(storage) is rdb  # ...and the backend is the storage given
    assert private_api.rdb_storage(rdb) is rdb
    assert private_api.rdb_storage(private_api.study_storage(optuna.create_study())) is None  # in memory
    assert storage.get_study_id_from_name(study.study_name) >= 0


def test_the_schema_holds_the_tables_and_columns_read(rdb):
    inspector = sqlalchemy.inspect(rdb.engine)
    assert {"trials", "trial_heartbeats"} <= set(inspector.get_table_names())
    assert {"trial_id", "study_id", "state"} <= {c["name"] for c in inspector.get_columns("trials")}
    assert {"trial_id"} <= {c["name"] for c in inspector.get_columns("trial_heartbeats")}


def test_running_trials_without_a_heartbeat_are_found(rdb):
    study = optuna.create_study(storage=rdb, directions=["maximize", "minimize"])
    storage = private_api.study_storage(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    silent, beating, finished = study.ask(), study.ask(), study.ask()
    ids = {t.number: storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
           for t in (silent, beating, finished)}
    rdb.record_heartbeat(ids[beating.number])
    study.tell(finished, [0.5, 1.0])
    assert private_api.trials_without_heartbeat(rdb, study_id) == {ids[silent.number]}
    other = optuna.create_study(storage=rdb)  # another study's trials are not this one's
    other.ask()
    assert private_api.trials_without_heartbeat(rdb, study_id) == {ids[silent.number]}


def test_fail_silent_trials_fails_and_retries_only_silent_trials_past_the_grace(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna' / 'studies.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = st.open_storage(url, heartbeat_s=60)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    silent, beating = study.ask(), study.ask()
    rdb = private_api.rdb_storage(private_api.study_storage(study))
    study_id = rdb.get_study_id_from_name(study.study_name)
    rdb.record_heartbeat(rdb.get_trial_id_from_study_id_trial_number(study_id, beating.number))
    assert st.fail_silent_trials(study, grace_s=3600) == []  # started just now: still in its grace
    assert st.fail_silent_trials(study, grace_s=0) == [silent.number]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[silent.number] == optuna.trial.TrialState.FAIL
    assert states[beating.number] == optuna.trial.TrialState.RUNNING
    retries = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs.get("failed_trial") for t in retries] == [silent.number]
    assert st.fail_silent_trials(optuna.create_study(), grace_s=0) == []  # in memory: no heartbeats


# ---------------------------------------------------------------- CodeCarbon

def test_the_cpu_power_mode_of_a_started_and_stopped_tracker():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from codecarbon import OfflineEmissionsTracker

        tracker = OfflineEmissionsTracker(country_iso_code=EnergyCfg().country_iso_code, tracking_mode="process",
                                          save_to_file=False, log_level="error", allow_multiple_runs=True)
        tracker.start()
        tracker.stop()
    cpus = [hw for hw in tracker._hardware if type(hw).__name__ == "CPU"]
    assert len(cpus) == 1 and cpus[0]._mode in CPU_MODES
    assert private_api.cpu_power_mode(tracker) == cpus[0]._mode
    method, cpu_method = describe_method(tracker)
    assert method.startswith(f"cpu={cpu_method};ram=estimate;gpu=")
    assert cpu_method != "unavailable"
    assert "gpu_count" in tracker.get_detected_hardware()  # the public field describe_method reads


# ---------------------------------------------------------------- Lightning

def test_the_ddp_strategy_starts_its_ranks_with_the_graceful_launcher():
    """Lightning still configures its launcher where ``ddp_strategy`` replaces it (the failing-rank
    test in test_scale_out.py shows what the replacement does)."""
    import lightning.pytorch as pl
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=private_api.ddp_strategy(), logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    launcher = trainer.strategy.launcher
    assert type(launcher).__name__ == "GracefulLauncher"
    assert launcher.num_processes == 2 and launcher.procs == []
    assert callable(_ChildProcessObserver._terminate_all)
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is False


# ---------------------------------------------------------------- Python

def test_exit_handlers_run_once_before_a_process_leaves_with_os_exit():
    import subprocess
    import sys

    code = ("import atexit, os; from pipeline import private_api; atexit.register(print, 'handler ran', flush=True); "
            "private_api.run_exit_handlers(); print('then', flush=True); os._exit(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (3, "handler ran\nthen\n")
