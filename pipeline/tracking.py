"""The one layer over MLflow: where the store is, how runs are named, tagged, ended.

Default store: ``sqlite:///<repo>/mlruns/mlflow.db`` with artifacts under ``<repo>/mlruns/artifacts``
(``<repo>`` is ``DVC_ROOT`` when DVC runs the stage, so queued experiments share one store).
``MLFLOW_TRACKING_URI`` in the environment, then ``tracking.tracking_uri`` in params, override it
(e.g. an MLflow server whose backend is PostgreSQL).

A run that raises is ended FAILED (KILLED for Ctrl-C / SIGTERM) with the error kept as a tag, so
no run is left RUNNING; one whose process was killed outright (SIGKILL) is ended KILLED by the
next command on its host (``end_runs_of_dead_processes``).

What the MLflow UI shows a new user by default is filled in: a run's name says what ran, on which
model, in which DVC experiment (or commit) and when (``run_label``); its data is a dataset input
(name and digest from the data card: the runs table's Dataset column); every model a stage writes
is a logged model of its run (``Run.log_model``: the Models column and the experiment's Models
view), with its headline figures (``MODEL_FIGURES``) linked to it and to the dataset, by the run
that wrote it and by the evaluation that tested it.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import interrupts, paths
from pipeline.config import TrackingCfg
from pipeline.errors import StoreError

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here: skip its DNS lookup
# A tracking server that stops answering fails a call within about a minute, not after MLflow's
# default of 7 retries with doubling waits of up to 120 s each. The environment wins.
for _key, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                     ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
    os.environ.setdefault(_key, _value)

# The figures linked to a logged model (the Models view's columns): accuracy and energy of training
# (train, refit, sweep) and of the test split (evaluate, sweep, compress), under the runs' own keys.
MODEL_FIGURES = ("final/val_acc", "final/energy_j", "test/acc", "test/energy_per_1k_j")
DIGEST_CHARS = 12  # of the data card's sha256: a dataset's digest in MLflow (its column holds 36)

# Reaching a tracking server before the first run: tries and the wait for each.
PROBE_TRIES, PROBE_TIMEOUT_S = 3, 3.0


def store_dir() -> Path:
    return paths.store_root() / "mlruns"


def tracking_uri(cfg: TrackingCfg) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri:
        return uri
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


def _is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:")


def _origin(cfg: TrackingCfg) -> str:
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.tracking_uri"


def redact(url: str) -> str:
    """A store's URL (MLflow's, Optuna's) without its password, fit for logs, tags and reports."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def check_server(uri: str, origin: str) -> None:
    """A tracking server answers MLflow's ``/health`` (bounded tries, seconds each), or a
    StoreError names the URI, where it came from and what happened."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    error = ""
    for attempt in range(PROBE_TRIES):
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as r:
                body = r.read(64).decode(errors="replace").strip()
            if body == "OK":
                return
            error = f"{url} answered {body[:40]!r}, not MLflow's 'OK': is this an MLflow tracking server?"
            break
        except urllib.error.HTTPError as err:
            error = f"{url} answered HTTP {err.code}: is this an MLflow tracking server?"
            break
        except (urllib.error.URLError, OSError, ValueError) as err:
            error = f"no answer ({getattr(err, 'reason', err)})"
        interrupts.sleep(0.5 * 2 ** attempt) if attempt + 1 < PROBE_TRIES else None
    raise StoreError(f"{origin}: the MLflow tracking server {redact(uri)} cannot be used: {error} "
                     f"({PROBE_TRIES} tries). Start it (make server) or fix the URI")


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or paths.store_root(),
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def base_tags(stage: str, family: str, card: dict | None) -> dict[str, str]:
    """The tags of every run: stage, family, code version and the data (from its card)."""
    card = card or {}
    tags = {
        "stage": stage,
        "family": family,
        "git_commit": git_commit(),
        "data_hash": card.get("sha256", "unknown"),
        "dataset": str(card.get("name", card.get("dataset", "unknown"))),
    }
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def run_label(name: str, tags: dict[str, Any]) -> str:
    """A run's name in the MLflow UI: ``name`` (stage, family, variant), then the DVC experiment
    or the commit it ran at, and when it started, so that reruns are told apart at a glance."""
    commit = str(tags.get("git_commit", "unknown"))
    where = tags.get("dvc_exp_name") or (f"git {commit[:7]}" if commit != "unknown" else "")
    return " ".join(filter(None, [name, f"@{where}" if where else "", time.strftime("%m-%d %H:%M")]))


def dataset_of(tags: dict[str, Any]) -> tuple[str, str] | None:
    """(name, digest) of the data a run's tags name (``base_tags``), or None when they name none."""
    digest = str(tags.get("data_hash", "unknown"))
    if digest == "unknown":
        return None
    return str(tags.get("dataset", "unknown")), digest[:DIGEST_CHARS]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out



# Characters MLflow refuses in a logged model's name ("mlp-baseline-prune_global-0.5" must be stored).
_NOT_IN_MODEL_NAMES = str.maketrans({c: "_" for c in "/:.%\"'"})


def logged_model_name(name: str) -> str:
    """``name`` as MLflow accepts it for a logged model: ``/ : . % " '`` become ``_``."""
    return name.translate(_NOT_IN_MODEL_NAMES)

class Run:
    """A started MLflow run; thin, so the rest of the code never imports mlflow."""

    def __init__(self, client, run_id: str, dataset: tuple[str, str] | None = None):
        self._client = client
        self.run_id = run_id
        self.dataset = dataset  # (name, digest) of the data the run used: its figures' dataset
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None

    def log(self, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            tags: dict[str, Any] | None = None) -> None:
        """Params (nested dicts flattened), metrics (step 0) and tags in one store write (a SQLite
        commit is ~8 ms here), or in as few as MLflow's batch limits allow."""
        from mlflow.entities import Metric, Param, RunTag

        ps = [Param(k, str(v)[:6000]) for k, v in flatten(params or {}).items()]
        ts = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items() if v is not None]
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
        while ps or ts or ms:  # MLflow's caps: 100 params, 100 tags, 1000 entries in all per batch
            self._client.log_batch(self.run_id, params=ps[:100], metrics=ms[:800], tags=ts[:100])
            ps, ms, ts = ps[100:], ms[800:], ts[100:]

    def log_params(self, params: dict[str, Any]) -> None:
        self.log(params=params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, background: bool = False) -> None:
        """Log a batch of metrics. ``background=True`` hands the write to a worker thread, so a
        training loop does not wait on the store (a SQLite commit is ~8 ms here); ``flush()``
        waits for it, and ending the run flushes."""
        self.log_steps({step or 0: metrics}, background=background)

    def log_steps(self, by_step: dict[int, dict[str, float]], background: bool = False) -> None:
        """Log metrics of several steps (e.g. a value per epoch, known at the end) in one batch;
        ``background`` as in ``log_metrics``."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for step, metrics in by_step.items()
                 for k, v in metrics.items() if v is not None]
        batches = [items[i:i + 1000] for i in range(0, len(items), 1000)]
        if background:
            self._ensure_worker()
            for b in batches:
                self._queue.put(b)
        else:
            for b in batches:
                self._client.log_batch(self.run_id, metrics=b)

    def has_params(self) -> bool:
        return bool(self._client.get_run(self.run_id).data.params)

    def log_metrics_to(self, run_id: str, metrics: dict[str, float]) -> bool:
        """Add metrics to another (finished) run of the same store, e.g. test figures to the
        training run they evaluate. False, with a warning, when that run is not in this store
        (a model restored from DVC's cache after the store was deleted, or trained elsewhere)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, 0) for k, v in metrics.items() if v is not None]
        return self._to_other(run_id, {"metrics": items}, "its test figures are logged on this run only")

    def set_tags_to(self, run_id: str, tags: dict[str, Any], fallback: str) -> bool:
        """Tag another (finished) run of the same store, as ``log_metrics_to`` logs to one;
        ``fallback`` says in the warning where the information is when that run is missing."""
        from mlflow.entities import RunTag

        return self._to_other(run_id, {"tags": [RunTag(k, str(v)[:5000]) for k, v in tags.items()]}, fallback)

    def _to_other(self, run_id: str, batch: dict, fallback: str) -> bool:
        from mlflow.exceptions import MlflowException

        if not any(batch.values()):
            return True
        try:
            self._client.log_batch(run_id, **batch)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("run %s is not in this MLflow store (model restored from DVC's cache, or trained "
                        "with another store): %s", run_id, fallback)
            return False
        return True

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._drain, name="mlflow-metrics", daemon=True)
            self._worker.start()

    def _drain(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                self._client.log_batch(self.run_id, metrics=batch)
            except BaseException as err:  # kept and raised by flush(): never dropped silently
                self._worker_error = self._worker_error or err

    def flush(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        if self._worker_error is not None:
            err, self._worker_error = self._worker_error, None
            raise err

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.log(tags=tags)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self._client.log_dict(self.run_id, data, name)

    def log_dataset(self, context: str) -> None:
        """Name the run's data (``self.dataset``) as its dataset input, used for ``context``
        (training or evaluation)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if self.dataset is None:
            return
        name, digest = self.dataset
        source = json.dumps({"uri": str(paths.PREPARED_DIR), "card_sha256_prefix": digest})
        self._client.log_inputs(self.run_id, datasets=[DatasetInput(
            Dataset(name=name, digest=digest, source_type="local", source=source),
            tags=[InputTag("mlflow.data.context", context)])])

    def log_model(self, files: list[Path], name: str, model_type: str, tags: dict[str, Any],
                  params: dict[str, Any]) -> str | None:
        """Log ``files`` (weights, spec) as an MLflow logged model of this run, named ``name``;
        returns its id (also the run's ``model_id`` tag), or None with a warning where the store
        has no logged models (an older tracking server): the run and its files stay as they are."""
        import shutil
        import tempfile

        from mlflow.exceptions import MlflowException

        name = logged_model_name(name)
        try:
            exp_id = self._client.get_run(self.run_id).info.experiment_id
            model = self._client.create_logged_model(
                exp_id, name=name, source_run_id=self.run_id, model_type=model_type,
                tags={k: str(v) for k, v in tags.items()},
                params={k: str(v)[:6000] for k, v in flatten(params).items()})
            with tempfile.TemporaryDirectory(prefix="logged-model-") as tmp:
                for f in files:
                    shutil.copy2(f, Path(tmp) / Path(f).name)
                self._client.log_model_artifacts(model.model_id, tmp)
            self._client.finalize_logged_model(model.model_id, "READY")
        except MlflowException as err:
            log.warning("the MLflow store keeps no logged models (%s): model %s is in run %s's artifacts only",
                        str(err)[:200], name, self.run_id)
            return None
        from mlflow.entities import LoggedModelOutput

        self._client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, 0)])
        self.set_tags({"model_id": model.model_id})
        return model.model_id

    def log_model_figures(self, model_id: str | None, metrics: dict[str, Any]) -> None:
        """Link the ``MODEL_FIGURES`` among ``metrics`` (this run's own keys and values) to the
        logged model ``model_id`` and to the run's dataset: the Models view's columns. A model
        this run did not write (an evaluation's) becomes the run's model input too."""
        from mlflow.entities import LoggedModelInput, Metric
        from mlflow.exceptions import MlflowException

        if not model_id:
            return
        try:
            source_run = self._client.get_logged_model(model_id).source_run_id
        except MlflowException:  # restored from DVC's cache after the store was deleted, or another store
            log.warning("logged model %s is not in this MLflow store: its figures are on run %s only",
                        model_id, self.run_id)
            return
        name, digest = self.dataset or (None, None)
        ts = int(time.time() * 1000)
        items = [Metric(k, float(metrics[k]), ts, 0, model_id=model_id, dataset_name=name, dataset_digest=digest)
                 for k in MODEL_FIGURES if isinstance(metrics.get(k), (int, float))]
        if items:
            self._client.log_batch(self.run_id, metrics=items)
        if source_run != self.run_id:
            self._client.log_inputs(self.run_id, models=[LoggedModelInput(model_id)])


class NullRun(Run):
    """The run handle of a process that computes but does not log: a rank other than 0 of a
    distributed run (rank 0 holds the one MLflow run and logs what the ranks measured together)."""

    def __init__(self):
        super().__init__(None, "")

    def log(self, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            tags: dict[str, Any] | None = None) -> None:
        pass

    def log_steps(self, by_step: dict[int, dict[str, float]], background: bool = False) -> None:
        pass

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: dict, name: str) -> None:
        pass

    def log_dataset(self, context: str) -> None:
        pass

    def log_model(self, files: list[Path], name: str, model_type: str, tags: dict[str, Any],
                  params: dict[str, Any]) -> str | None:
        return None

    def log_model_figures(self, model_id: str | None, metrics: dict[str, Any]) -> None:
        pass


def _experiment_id(client, cfg: TrackingCfg, uri: str) -> str:
    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if _is_local_store(uri):
        art = store_dir() / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        location = art.as_uri()
    try:
        return client.create_experiment(cfg.experiment_name, artifact_location=location)
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(cfg.experiment_name)
        if exp is None:
            raise
        return exp.experiment_id


def client_for(cfg: TrackingCfg):
    from mlflow.tracking import MlflowClient

    interrupts.defer()  # from the first store on, a signal ends what was started, at a safe point
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")) and uri not in _checked:
        check_server(uri, _origin(cfg))
        _checked.add(uri)
    # Creating the client creates or migrates a SQLite store's schema: one process at a time.
    try:
        with paths.store_lock(uri):
            return MlflowClient(tracking_uri=uri), uri
    except Exception as err:  # an unknown scheme, a database that refuses the connection
        raise StoreError(f"{_origin(cfg)}: the MLflow store {redact(uri)} cannot be used: "
                         f"{type(err).__name__}: {str(err)[:300]}") from err


_checked: set[str] = set()  # servers that answered in this process


def create_run(cfg: TrackingCfg, run_name: str, tags: dict[str, Any]) -> str:
    """A new RUNNING run's id, to be entered with ``tracked_run(..., run_id=...)``."""
    client, uri = client_for(cfg)
    run = client.create_run(_experiment_id(client, cfg, uri), run_name=run_label(run_name, tags),
                            tags={k: str(v) for k, v in tags.items()})
    Run(client, run.info.run_id, dataset_of(tags)).log_dataset(_context(tags))
    return run.info.run_id


def _context(tags: dict[str, Any]) -> str:
    return "evaluation" if tags.get("stage") == "evaluate" else "training"


def running_runs_tagged(cfg: TrackingCfg, tags: dict[str, Any]) -> list[str]:
    """Ids of the experiment's RUNNING runs that carry all of ``tags`` (a dead process's runs,
    found by what they were tagged with when created)."""
    client, _ = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is None:
        return []
    # Matched here, not in the filter string: tag values (a study name holds the experiment's) may
    # hold quotes that MLflow's filter syntax cannot escape. RUNNING runs are few.
    wanted = {k: str(v) for k, v in tags.items()}
    return [r.info.run_id for r in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
            if all(r.data.tags.get(k) == v for k, v in wanted.items())]


def end_dangling_run(cfg: TrackingCfg, run_id: str, error: str) -> bool:
    """End a run whose process died without ending it (SIGKILL, power loss) as KILLED, with
    ``error`` as its tag. Returns False if the run had ended already."""
    client, _ = client_for(cfg)
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_tag(run_id, "error", error)
    client.set_terminated(run_id, status="KILLED")
    return True


def tag_run(cfg: TrackingCfg, run_id: str, tags: dict[str, Any]) -> None:
    """Set tags on a run by id, whatever its state (a finished run's record corrected)."""
    client, _ = client_for(cfg)
    Run(client, run_id).set_tags(tags)


def _owner() -> dict[str, str]:
    """Tags naming the process that owns a run: its host, pid and start time (a pid alone may be
    reused by a later process)."""
    import socket

    import psutil

    return {"process.host": socket.gethostname(), "process.pid": str(os.getpid()),
            "process.started": f"{psutil.Process().create_time():.2f}"}


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 2.0  # boot-time rounding: same process
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # there, but not ours to inspect
        return True


_swept: set[str] = set()  # stores whose dead processes' runs this process has ended


def end_runs_of_dead_processes(client, exp_id: str, uri: str) -> list[str]:
    """End KILLED, once per process and store, the RUNNING runs that a process of this host owned
    and that died without ending them (SIGKILL, the out-of-memory killer, a power loss), with an
    ``error`` tag saying so. Left alone: runs of other hosts, a search's parent run (shared by its
    workers, reopened by the next) and its trials (the study's heartbeat ends those with the
    trial's fate, ``pipeline.tuning.study``). Returns their ids."""
    if uri in _swept:
        return []
    _swept.add(uri)
    me = _owner()
    ended = []
    for r in client.search_runs([exp_id], "attributes.status = 'RUNNING'"):
        t = r.data.tags
        if t.get("process.host") != me["process.host"] or "process.pid" not in t or "trial_number" in t:
            continue
        pid, started = int(t["process.pid"]), float(t.get("process.started", 0))
        if _alive(pid, started):
            continue
        client.set_tag(r.info.run_id, "error", f"its process (pid {pid} on {me['process.host']}) ended without "
                                               "ending the run: killed outright (SIGKILL, out of memory) or the "
                                               "machine stopped")
        client.set_terminated(r.info.run_id, status="KILLED")
        ended.append(r.info.run_id)
    if ended:
        log.warning("ended %d run(s) left RUNNING by processes that died: %s", len(ended), ", ".join(ended))
    return ended


@contextmanager
def tracked_run(cfg: TrackingCfg, run_name: str, tags: dict[str, Any], run_id: str | None = None,
                finished_on: tuple[type[BaseException], ...] = ()) -> Iterator[Run]:
    """Start a run (or reopen ``run_id``); end it FINISHED, FAILED (exception) or KILLED
    (interrupt), never RUNNING. Exceptions in ``finished_on`` (a pruned trial) end it FINISHED."""
    if run_id is None:
        interrupts.check()  # a signal during start-up (imports, data loading): no run to start
    client, uri = client_for(cfg)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        if "error" in client.get_run(run_id).data.tags:  # from an earlier, interrupted session
            client.delete_tag(run_id, "error")
        handle = Run(client, run_id, dataset_of(tags))
        handle.set_tags(tags)
    else:
        exp_id = _experiment_id(client, cfg, uri)
        end_runs_of_dead_processes(client, exp_id, uri)
        run = client.create_run(exp_id, run_name=run_label(run_name, tags),
                                tags={**{k: str(v) for k, v in tags.items()}, **_owner()})
        handle = Run(client, run.info.run_id, dataset_of(tags))
    try:
        interrupts.check()  # a reopened run (created RUNNING by create_run) ends KILLED, not RUNNING
        if run_id is None:
            handle.log_dataset(_context(tags))
        yield handle
        handle.flush()
        # A signal during the run's last steps: the stage exits 130 and DVC keeps none of its
        # outputs, so the run must not claim FINISHED.
        interrupts.check()
    except finished_on:
        handle.flush()
        client.set_terminated(handle.run_id, status="FINISHED")
        raise
    except BaseException as err:
        # An error raised while stopping for a signal (a DDP peer gone) is the interrupt's doing.
        killed = isinstance(err, (KeyboardInterrupt, SystemExit)) or interrupts.received() is not None
        try:
            try:
                handle.flush()
            finally:
                handle.set_tags({"error": f"{type(err).__name__}: {err}"})
        finally:
            client.set_terminated(handle.run_id, status="KILLED" if killed else "FAILED")
        raise
    else:
        client.set_terminated(handle.run_id, status="FINISHED")


KNEE_ALIAS = "knee"


def register_knee(cfg: TrackingCfg, model_id: str, description: str) -> str | None:
    """Register the logged model ``model_id`` (the report's knee) as a version of the registered
    model ``<experiment>-knee`` and point its alias ``knee`` at it; a knee already registered is
    left as it is. Returns the version, or None with a warning where the store cannot do it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, uri = client_for(cfg)
    name = f"{cfg.experiment_name}-knee"
    mlflow.set_tracking_uri(uri)  # the registry resolves models:/ URIs through the global client
    try:
        try:
            current = client.get_model_version_by_alias(name, KNEE_ALIAS)
            if current.source == f"models:/{model_id}":  # (its model_id reads None from a SQLite store)
                return str(current.version)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        # The fluent call also tags the logged model with its version (the Models view's column).
        version = mlflow.register_model(f"models:/{model_id}", name, await_registration_for=0)
        client.update_model_version(name, version.version, description=description)
        client.set_registered_model_alias(name, KNEE_ALIAS, version.version)
        return str(version.version)
    except MlflowException as err:
        log.warning("the knee model %s was not registered: %s", model_id, str(err)[:300])
        return None
