"""The project's only uses of private parts of its libraries, each one where no public API does
the job. tests/test_private_api.py exercises every one of them on the real libraries (a SQLite
Optuna storage, a CodeCarbon tracker started and stopped), so an upgrade that changes one fails
there, not in a stage. Checked against the versions in ``CHECKED`` (those pyproject.toml pins);
MLflow and DVC are used through their public APIs only.

Optuna (``tuning.study.fail_silent_trials``: a worker killed between asking for its trial and
its first heartbeat leaves the trial RUNNING; Optuna's own ``fail_stale_trials`` only looks at
trials that recorded a heartbeat, and its heartbeat API has no reader of heartbeats):

- ``study_storage``: ``Study._storage``. A Study does not expose its storage; failing a trial by
  hand needs the storage's public ``set_trial_state_values``, ``get_trial`` and
  ``get_study_id_from_name``.
- ``rdb_storage``: ``_CachedStorage._backend``. Optuna wraps an ``RDBStorage`` given to
  ``create_study`` in a cache; the heartbeat settings and ``engine`` are the RDBStorage's.
- ``trials_without_heartbeat``: SQL through ``RDBStorage.engine`` on the schema's ``trials``
  and ``trial_heartbeats`` tables (column names and the state stored as ``'RUNNING'``).

CodeCarbon (``energy.describe_method``: every reading says whether the CPU energy was measured
by a counter or estimated from load and TDP):

- ``cpu_power_mode``: ``BaseEmissionsTracker._hardware`` and the CPU object's ``_mode``. No
  public field names the method (``EmissionsData`` and ``get_detected_hardware()`` name the CPU
  model and count, not how its power is obtained).

Lightning (``compute.Devices``: a DDP rank that dies must end the run FAILED or KILLED, not
leave it RUNNING):

- ``ddp_strategy``: ``DDPStrategy._configure_launcher``, ``_SubprocessScriptLauncher`` (its
  ``launch`` steps: ``cluster_environment``, ``_call_children_scripts``, ``procs``) and
  ``_ChildProcessObserver._terminate_all``. Lightning's observer of the ranks it starts SIGKILLs
  the main process as soon as one rank exits with an error (a Ctrl-C included), before the main
  process can end its MLflow run; no public option changes that.

Python (``warm``: a command run in a child forked from the warm server leaves with ``os._exit``,
skipping the teardown of every module the server imported):

- ``run_exit_handlers``: ``atexit._run_exitfuncs``, the handlers Python runs at exit (MLflow's,
  CodeCarbon's, logging's); the ``atexit`` module has no public way to run them.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any

CHECKED = {"optuna": "5.0.0", "codecarbon": "3.3.2", "lightning": "2.6.6"}


# ---------------------------------------------------------------- Optuna

def study_storage(study) -> Any:
    """The storage a study reads and writes (``optuna.storages.BaseStorage``)."""
    return study._storage


def rdb_storage(storage) -> Any:
    """The ``RDBStorage`` behind ``storage`` (unwrapping Optuna's cache), or None when the
    storage is not a relational database (in-memory, journal)."""
    from optuna.storages import RDBStorage

    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def trials_without_heartbeat(rdb, study_id: int) -> set[int]:
    """Storage ids (``trial_id``) of the study's RUNNING trials that never recorded a heartbeat."""
    from sqlalchemy import text

    with rdb.engine.connect() as con:
        rows = con.execute(text(
            "SELECT t.trial_id FROM trials t WHERE t.study_id = :sid AND t.state = 'RUNNING' "
            "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)"),
            {"sid": study_id}).fetchall()
    return {int(row[0]) for row in rows}


# ---------------------------------------------------------------- CodeCarbon

def cpu_power_mode(tracker) -> str | None:
    """How CodeCarbon obtains the CPU's power once its hardware is set up: ``intel_rapl``,
    ``intel_power_gadget``, ``windows_emi``, ``cpu_load`` (load x TDP) or ``constant`` (TDP);
    None when it tracks no CPU."""
    for hw in getattr(tracker, "_hardware", None) or []:
        if type(hw).__name__ == "CPU":
            return getattr(hw, "_mode", None)
    return None


# ---------------------------------------------------------------- Lightning

# How long the main process of a DDP run has, once a rank has died, to end its run and exit
# before it is killed (a collective it waits in may never return).
DDP_GRACE_S = 30.0


def ddp_strategy(find_unused_parameters: bool = False):
    """Lightning's DDP strategy, whose watcher of the ranks it starts asks the main process to
    stop (SIGTERM: the pipeline ends its MLflow run and exits) when a rank exits with an error,
    and kills it only if it is still there ``DDP_GRACE_S`` later. Lightning's own watcher kills
    it (SIGKILL) at once, leaving its MLflow run RUNNING."""
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    class GracefulObserver(_ChildProcessObserver):
        def _terminate_all(self) -> None:
            for proc in self._child_processes:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            os.kill(self._main_pid, signal.SIGTERM)
            time.sleep(DDP_GRACE_S)  # a daemon thread: it ends with the main process
            for proc in self._child_processes:
                if proc.poll() is None:
                    proc.kill()
            os.kill(self._main_pid, signal.SIGKILL)

    class GracefulLauncher(_SubprocessScriptLauncher):
        def launch(self, function, *args, trainer=None, **kwargs):  # Lightning's, with the observer above
            self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
            if not self.cluster_environment.creates_processes_externally:
                self._call_children_scripts()
                GracefulObserver(main_pid=os.getpid(), child_processes=self.procs).start()
            _set_num_threads_if_needed(num_processes=self.num_processes)
            return function(*args, **kwargs)

    class GracefulDDPStrategy(DDPStrategy):
        def _configure_launcher(self) -> None:
            super()._configure_launcher()
            if type(self._launcher) is _SubprocessScriptLauncher:
                self._launcher = GracefulLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    return GracefulDDPStrategy(find_unused_parameters=find_unused_parameters)


# ---------------------------------------------------------------- Python

def run_exit_handlers() -> None:
    """Run the ``atexit`` handlers now, as Python's shutdown would (each once: they are cleared)."""
    import atexit

    atexit._run_exitfuncs()
