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
"""
from __future__ import annotations

from typing import Any

CHECKED = {"optuna": "5.0.0", "codecarbon": "3.3.2"}


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
