"""A store made by the pipeline, served by a real ``mlflow server`` on 127.0.0.1: its REST API
returns the runs with their accuracy and energy metrics and their family/stage tags, ``compare``
reads it over HTTP, and (opt-in, marker ``browser``) headless Chromium renders them in the UI.

Slow (the server takes 20-30 s to answer on a 2-core machine): CI runs it, ``make test-fast``
skips it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import tiny_raw

pytestmark = pytest.mark.slow
EXPERIMENT = "energy-pipeline"


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory, meter):
    """prepare, train and evaluate a tiny mlp through the pipeline's own code, into a fresh store."""
    from pipeline.config import parse_params
    from pipeline.data.prepare import prepare, save
    from pipeline.evaluation.evaluate import evaluate_family
    from pipeline.training.train import train_family

    d = tmp_path_factory.mktemp("served")
    saved = {k: os.environ.pop(k) for k in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI") if k in os.environ}
    cwd = os.getcwd()
    os.chdir(d)
    try:
        params = parse_params(tiny_raw())
        save(prepare(params), "mnist1d")
        train_family(params, "mlp", meter)
        evaluate_family(params, "mlp", meter=meter)
    finally:
        os.chdir(cwd)
        os.environ.update(saved)
    return d


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


@pytest.fixture(scope="module")
def server(pipeline_store):
    """``mlflow server`` over the pipeline's store; waits (at most 180 s) until /health answers,
    and always stops the server's whole process group."""
    port = _free_port()
    store = pipeline_store / "mlruns"
    log = (pipeline_store / "server.log").open("w")
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
           "--default-artifact-root", (store / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(cmd, cwd=pipeline_store, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{(pipeline_store / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer within 180 s:\n{(pipeline_store / 'server.log').read_text()}")
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


def _experiment_id(base: str) -> str:
    return _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]["experiment_id"]


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _metrics(run: dict) -> dict:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_rest_api_returns_runs_with_accuracy_energy_and_grouping_tags(server):
    exp_id = _experiment_id(server)
    runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
    by_stage = {_tags(r)["stage"]: r for r in runs}
    assert set(by_stage) == {"train", "evaluate"}
    for run in by_stage.values():
        tags, metrics = _tags(run), _metrics(run)
        assert run["info"]["status"] == "FINISHED"
        assert tags["family"] == "mlp" and tags["variant"] == "baseline"
        assert {"git_commit", "data_hash", "energy_method"} <= tags.keys()
        assert 0 <= metrics["test/acc"] <= 1 and metrics["test/f1_macro"] > 0 and metrics["test/energy_per_1k_j"] > 0
        assert metrics["energy/total_j"] > 0 and metrics["energy/emissions_kg"] > 0
    train = _metrics(by_stage["train"])
    assert train["model/params_total"] > 0 and train["final/flops_per_joule"] > 0
    assert _tags(by_stage["evaluate"])["source_run_id"] == by_stage["train"]["info"]["run_id"]
    # The UI's filter box takes the same expressions: group by family and stage.
    only_train = _post(f"{server}/api/2.0/mlflow/runs/search",
                       {"experiment_ids": [exp_id], "filter": "tags.stage = 'train' and tags.family = 'mlp'"})["runs"]
    assert [r["info"]["run_id"] for r in only_train] == [by_stage["train"]["info"]["run_id"]]


def test_compare_reads_the_store_through_the_server(server, pipeline_store, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    env.pop("DVC_ROOT", None)
    (tmp_path / "params.yaml").write_text("tracking: {experiment_name: energy-pipeline}\n")
    out = subprocess.run([sys.executable, "-m", "pipeline", "compare", "--out", str(tmp_path / "r")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "compared 1 models" in out.stdout
    assert "mlp-baseline" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.browser
def test_ui_renders_the_runs_in_headless_chromium(server, chromium):
    exp_id = _experiment_id(server)
    runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    train = next(r for r in runs if _tags(r)["stage"] == "train")
    # MLflow 3 opens an experiment in its GenAI view; the runs table is the "Model training" one.
    table = chromium.open(f"{server}/#/experiments/{exp_id}/runs?workflowType=machine_learning", timeout_s=90)
    text = table.page.wait_for_function(
        "document.body && document.body.innerText.includes('train-mlp') "
        "&& document.body.innerText.includes('evaluate-mlp-baseline') && document.body.innerText",
        polling=500, timeout=120_000).json_value()
    assert EXPERIMENT in text
    run = chromium.open(f"{server}/#/experiments/{exp_id}/runs/{train['info']['run_id']}?workflowType=machine_learning",
                        timeout_s=90)
    page = run.page.wait_for_function(
        "document.body && document.body.innerText.includes('test/acc') "
        "&& document.body.innerText.includes('energy/total_j') && document.body.innerText",
        polling=500, timeout=120_000).json_value()
    assert "mlp" in page and "train" in page
    external = table.external() + run.external()
    assert not external, external
