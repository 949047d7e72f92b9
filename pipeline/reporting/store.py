"""The reporting side's only view of MLflow: read runs (never write), as plain records.

One ``search_runs`` query per page of up to 5,000 runs returns every run with its latest metrics,
params and tags, so comparing 1,000 runs costs a couple of queries, not one call per run (no
metric histories are read). Python's cyclic garbage collector is paused during the query: the ORM
allocates hundreds of thousands of small objects, and collecting them as they arrive more than
doubled the query's time here.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import TrackingCfg
from pipeline.data.source import DataError
from pipeline.tracking import tracking_uri

PAGE_SIZE = 5000  # runs per search_runs call (MLflow accepts up to 50,000)


class StoreError(DataError):
    """The store or an experiment asked for does not exist; the message says what does."""


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run: identity, latest value of each metric, params and tags (all strings)."""

    run_id: str
    experiment: str
    name: str
    status: str
    start_ms: int
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block (back on after, if it was on): the
    one pause for the reporting side's bursts of short-lived objects (this module's query, the
    whole ``compare`` command). Nests: an inner pause leaves an outer one in force."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _client(cfg: TrackingCfg):
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():  # MLflow would create an empty store: say what is missing instead
            raise StoreError(f"no MLflow store at {db}: run the pipeline first (dvc repro), "
                             "or point MLFLOW_TRACKING_URI at one")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri), uri


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def filter_string(tags_equal: dict[str, str] | None = None, tags_prefix: dict[str, str] | None = None,
                  status: str | None = "FINISHED") -> str:
    """An MLflow search filter: tags equal to a value, tags starting with a prefix, run status."""
    clauses = [f"attributes.status = {_quote(status)}"] if status else []
    clauses += [f"tags.`{k}` = {_quote(v)}" for k, v in (tags_equal or {}).items()]
    clauses += [f"tags.`{k}` LIKE {_quote(v.replace('%', '').replace('_', '') + '%')}"
                for k, v in (tags_prefix or {}).items()]
    return " and ".join(clauses)


def read_runs(cfg: TrackingCfg, experiments: list[str] | None = None, filter_: str = "",
              all_experiments: bool = False) -> tuple[list[RunRecord], list[str], str]:
    """Active runs of the named MLflow experiments (default: ``tracking.experiment_name``; every
    experiment with ``all_experiments``) matching the filter. Returns (runs, experiment names
    read, store URI). Unknown experiment names raise StoreError listing the known ones."""
    client, uri = _client(cfg)
    from mlflow.entities import ViewType

    with gc_paused():
        known = {e.name: e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
        if all_experiments:
            names = sorted(known)
        else:
            names = list(dict.fromkeys(experiments or [cfg.experiment_name]))
            missing = [n for n in names if n not in known]
            if missing:
                raise StoreError(f"no MLflow experiment named {', '.join(map(repr, missing))} in {uri}; "
                                 f"known: {', '.join(sorted(known)) or 'none'}")
        if not names:
            return [], [], uri
        id_to_name = {known[n]: n for n in names}
        records: list[RunRecord] = []
        token = None
        while True:
            page = client.search_runs(list(id_to_name), filter_string=filter_, run_view_type=ViewType.ACTIVE_ONLY,
                                      max_results=PAGE_SIZE, page_token=token)
            for run in page:
                info, data = run.info, run.data
                records.append(RunRecord(info.run_id, id_to_name.get(info.experiment_id, info.experiment_id),
                                         info.run_name or "", info.status, info.start_time or 0,
                                         data.tags, data.metrics, data.params))
            token = page.token
            if not token:
                break
    return records, names, uri
