"""The shared setup of several machines, on one: ``python -m pipeline server`` (``make server``)
with PostgreSQL as its store and artifacts proxied by the server, the pipeline's train, evaluate
and tune commands logging to it over HTTP, and a search run by three commands in three folders
(three "machines") sharing one Optuna study on PostgreSQL. Everything is read back through the
server: runs, metrics, the study's nesting, artifacts; ``compare`` reads through it; (marker
``browser``) headless Chromium renders the runs in its UI. A tracking URI that does not answer
fails within seconds, naming it.

Needs the PostgreSQL at 127.0.0.1:5432 (every machine of this project runs one; a missing one is
a failure, not a skip). Each session uses fresh databases and drops them. Slow (the server takes
20-30 s to start on 2 cores): CI runs it, ``make test-fast`` skips it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, shared_warm, tiny_raw

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
EXPERIMENT = "energy-pipeline"
PG = "postgresql://postgres@127.0.0.1:5432"
N_TRIALS = 3
WORKERS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _post(url: str, body: dict, timeout: float = 10):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _admin(sql: str) -> None:
    import psycopg

    try:
        with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5) as con:
            con.execute(sql)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is needed by these tests and does not answer: {err}")


@pytest.fixture(scope="module")
def databases():
    """Fresh databases for the MLflow server and the Optuna study, dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    names = {"mlflow": f"mlflow_test_{tag}", "optuna": f"optuna_test_{tag}"}
    _admin(f"CREATE DATABASE {names['optuna']}")  # the server creates its own (python -m pipeline server)
    try:
        yield {k: f"{PG}/{v}" for k, v in names.items()}
    finally:
        for name in names.values():
            _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def server(databases, tmp_path_factory):
    """``python -m pipeline server`` on a free port; waits (at most 180 s) until /health answers,
    and always stops the server's whole process group."""
    d = tmp_path_factory.mktemp("server")
    port = _free_port()
    log = (d / "server.log").open("w")
    cmd = [sys.executable, "-m", "pipeline", "server", "--backend-store-uri", databases["mlflow"],
           "--artifacts", str(d / "mlartifacts"), "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{(d / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer within 180 s:\n{(d / 'server.log').read_text()}")
            time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def _env(server: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING", "OPTUNA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    env.update(shared_warm())
    if server:
        env["MLFLOW_TRACKING_URI"] = server
    return env


def _cli(case: Path, server: str | None, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=case, env=_env(server),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def served(server, databases, tmp_path_factory):
    """prepare, train and evaluate an MLP logging to the server; then its search, run by three
    commands from three folders at once on one study in PostgreSQL."""
    raw = tiny_raw()
    raw["families"] = ["mlp"]
    raw["tune"]["search"].update({"n_trials": N_TRIALS, "max_epochs": 1, "pruner": "none",
                                  "storage": databases["optuna"]})
    raw["tune"]["space"] = {"train": {"lr": {"low": 0.001, "high": 0.01, "log": True}}, "mlp": {"width": [16, 32]}}
    main = tmp_path_factory.mktemp("machine0")
    (main / "params.yaml").write_text(yaml.safe_dump(raw))
    for args in (["prepare"], ["train", "--family", "mlp"], ["evaluate", "--family", "mlp"]):
        out = _cli(main, server, *args)
        assert out.returncode == 0, f"{args}: {out.stderr}"
    machines = [main]
    for i in range(1, WORKERS):
        m = tmp_path_factory.mktemp(f"machine{i}")
        shutil.copy(main / "params.yaml", m / "params.yaml")
        shutil.copytree(main / "data", m / "data")
        machines.append(m)
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "tune", "--family", "mlp"], cwd=m, env=_env(server),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for m in machines]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * WORKERS, "\n".join(outs)
    return {"dir": main, "machines": machines, "raw": raw}


def _experiment_id(base: str) -> str:
    return _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]["experiment_id"]


def _search(base: str, filter_: str = "") -> list[dict]:
    body = {"experiment_ids": [_experiment_id(base)], "max_results": 1000, "filter": filter_}
    return _post(f"{base}/api/2.0/mlflow/runs/search", body).get("runs", [])


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _metrics(run: dict) -> dict:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_train_and_evaluate_runs_metrics_and_artifacts_read_back_through_the_server(server, served):
    from mlflow.tracking import MlflowClient

    by_stage = {}
    for run in _search(server, "tags.variant = 'baseline'"):
        by_stage.setdefault(_tags(run)["stage"], []).append(run)
    assert {k: len(v) for k, v in by_stage.items()} == {"train": 1, "evaluate": 1}
    train, evaluate = by_stage["train"][0], by_stage["evaluate"][0]
    for run in (train, evaluate):
        tags, metrics = _tags(run), _metrics(run)
        assert run["info"]["status"] == "FINISHED"
        assert tags["family"] == "mlp" and tags["variant"] == "baseline"
        assert {"git_commit", "data_hash", "energy_method"} <= tags.keys()
        assert metrics["test/f1_macro"] > 0 and metrics["test/energy_per_1k_j"] > 0
        assert metrics["energy/total_j"] > 0 and metrics["energy/emissions_kg"] > 0
    assert _metrics(train)["model/params_total"] > 0 and _metrics(train)["final/flops_per_joule"] > 0
    assert _tags(evaluate)["source_run_id"] == train["info"]["run_id"]
    params = {p["key"]: p["value"] for p in train["data"]["params"]}
    assert params["compute.accelerator"] == "cpu" and params["compute.world_size"] == "1"
    # Per-epoch history and the artifacts, through the server's proxy (the client never sees its folder).
    history = _get(f"{server}/api/2.0/mlflow/metrics/get-history?run_id={train['info']['run_id']}&metric_key=val/acc")
    assert len(history["metrics"]) == served["raw"]["train"]["max_epochs"]
    client = MlflowClient(tracking_uri=server)
    listed = {a.path for a in client.list_artifacts(train["info"]["run_id"])}
    assert {"energy.json", "data_card.json", "best.ckpt", "spec.json"} <= listed
    local = served["dir"] / "downloaded"
    energy = json.loads(Path(client.download_artifacts(train["info"]["run_id"], "energy.json", str(local))).read_text())
    run_json = json.loads((served["dir"] / "models" / "mlp" / "baseline" / "run.json").read_text())
    assert energy == run_json["energy"] and energy["energy_j"] == pytest.approx(_metrics(train)["energy/total_j"])


def test_the_server_runs_without_mlflows_job_runner(server):
    """``python -m pipeline server`` starts MLflow's HTTP workers only: not its job runner and
    huey consumers (eight more processes importing MLflow beside the work being measured)."""
    import psutil

    port = server.rsplit(":", 1)[1]
    roots = [p for p in psutil.process_iter(["cmdline"])
             if "server" in (p.info["cmdline"] or []) and port in (p.info["cmdline"] or [])]
    tree = [" ".join(c.cmdline()) for r in roots for c in [r, *r.children(recursive=True)]]
    assert any("uvicorn" in c for c in tree), tree  # the tree is the server's
    assert not [c for c in tree if "mlflow.server.jobs" in c or "huey" in c], tree


def test_three_commands_share_one_study_nested_under_one_parent_run(server, served, databases):
    import optuna

    studies = optuna.get_all_study_summaries(storage=databases["optuna"])
    assert len(studies) == 1
    study = optuna.load_study(study_name=studies[0].study_name, storage=databases["optuna"])
    states = [t.state for t in study.trials]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == N_TRIALS, states
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]

    parents = _search(server, "tags.role = 'study'")
    assert len(parents) == 1, "three commands, one study: one parent run"
    parent_id = parents[0]["info"]["run_id"]
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    trials = _search(server, "tags.role = 'trial'")
    counted = [r for r in trials if _tags(r).get("trial_state") == "COMPLETE"]
    assert len(counted) == N_TRIALS and all(_tags(r)["mlflow.parentRunId"] == parent_id for r in trials)
    assert all(_metrics(r)["energy/total_j"] > 0 for r in counted)
    # Each machine waited for the shared study and refit its chosen trial.
    assert len(_search(server, "tags.role = 'refit'")) == WORKERS
    for m in served["machines"]:
        assert json.loads((m / "metrics" / "tune" / "mlp.json").read_text())["trials"] == N_TRIALS


def test_compare_reads_the_store_through_the_server(server, served, tmp_path):
    (tmp_path / "params.yaml").write_text("tracking: {experiment_name: energy-pipeline}\n")
    out = _cli(tmp_path, server, "compare", "--out", str(tmp_path / "r"), timeout=180)
    assert out.returncode == 0, out.stderr
    report = (tmp_path / "r" / "report.md").read_text()
    assert "mlp-baseline" in report


@pytest.mark.parametrize("uri, says", [
    ("http://127.0.0.1:{free}", "no answer"),                     # nothing listens
    ("http://127.0.0.1:5432", "no answer"),                       # PostgreSQL, not an MLflow server
])
def test_a_tracking_uri_that_does_not_answer_fails_within_seconds_naming_it(tmp_path, uri, says):
    uri = uri.format(free=_free_port())
    raw = tiny_raw()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert _cli(tmp_path, None, "prepare").returncode == 0
    t0 = time.monotonic()
    out = _cli(tmp_path, uri, "train", "--family", "mlp", timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 2, out.stderr
    assert f"MLFLOW_TRACKING_URI: the MLflow tracking server {uri} cannot be used: {says}" in out.stderr
    assert took < 30, f"took {took:.0f} s"
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.browser
def test_ui_renders_the_runs_in_headless_chromium(server, served, chromium):
    """The MLflow UI as a new user opens it: the runs table, a run's page and the Models view."""
    exp_id = _experiment_id(server)
    train = _search(server, "tags.stage = 'train'")[0]
    # MLflow 3 opens an experiment in its GenAI view; the runs table is the "Model training" one.
    table = chromium.open(f"{server}/#/experiments/{exp_id}/runs?workflowType=machine_learning", timeout_s=90)
    text = table.page.wait_for_function(
        "document.body && document.body.innerText.includes('train-mlp') "
        "&& document.body.innerText.includes('evaluate-mlp-baseline') && document.body.innerText",
        polling=500, timeout=120_000).json_value()
    assert EXPERIMENT in text
    run = chromium.open(f"{server}/#/experiments/{exp_id}/runs/{train['info']['run_id']}?workflowType=machine_learning",
                        timeout_s=90)
    # The metrics table renders its first rows only (53 metrics): accuracy and energy are among them.
    page = run.page.wait_for_function(
        "document.body && document.body.innerText.includes('val/acc') "
        "&& document.body.innerText.includes('energy/total_j') && document.body.innerText",
        polling=500, timeout=120_000).json_value()
    assert "mlp" in page and "train" in page
    # What the default columns hold (a fresh browser profile, nothing configured): the data as a
    # dataset (the card's name and digest) and each model as a link to its logged model.
    digest = _tags(train)["data_hash"][:12]
    assert f"mnist1d ({digest})" in text, text
    links = table.page.eval_on_selector_all("a", "els => els.map(e => [e.getAttribute('href'), e.innerText.trim()])")
    assert any("/models/m-" in (href or "") and name == "mlp-baseline" for href, name in links), links
    # The experiment's Models view: each model with its accuracy and energy, under its dataset.
    # Its grid renders the columns in view only: a wide window shows them all.
    models = chromium.open(f"{server}/#/experiments/{exp_id}/models?workflowType=machine_learning", timeout_s=90)
    models.page.set_viewport_size({"width": 3000, "height": 900})
    view = models.page.wait_for_function(
        "document.body && document.body.innerText.includes('mlp-tuned') "
        "&& document.body.innerText.includes('test/energy_per_1k_j') && document.body.innerText",
        polling=500, timeout=120_000).json_value()
    for column in ("mlp-baseline", f"mnist1d (#{digest})", "final/val_acc", "final/energy_j", "test/acc"):
        assert column in view, (column, view)
    external = table.external() + run.external() + models.external()
    assert not external, external
