"""Faults: signals, failures inside training, a broken energy meter, concurrent writers, and the
project's open doors. Every run ends FINISHED, FAILED or KILLED with its energy; none is lost
and none is left RUNNING."""
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from pipeline import paths
from pipeline.config import EnergyCfg, parse_params
from pipeline.data.prepare import prepare, save
from pipeline.tracking import client_for
from pipeline.training.train import train_family

from .conftest import ROOT, sqlite_count, tiny_raw


@pytest.fixture
def prepared(tiny_params, workdir):
    p = prepare(tiny_params())
    save(p, "mnist1d")
    return p


def _runs(params, filter_string=""):
    client, _ = client_for(params.tracking)
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    return client.search_runs([exp.experiment_id], filter_string) if exp else []


def _val_acc_rows(db) -> int:
    return sqlite_count(db, "SELECT count(*) FROM metrics WHERE key = 'val/acc'")


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_during_training_kills_the_run_keeps_its_energy_and_no_output(workdir, signame):
    raw = tiny_raw(**{"train.max_epochs": 500, "train.early_stopping_patience": 0})
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    save(prepare(params), "mnist1d")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--family", "mlp"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _val_acc_rows(workdir / "mlruns" / "mlflow.db") < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(getattr(signal, signame))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "interrupted" in out
    (run,) = _runs(params)
    assert run.info.status == "KILLED" and run.data.tags["error"] == f"Interrupted: {signame}"
    assert run.data.metrics["energy/total_j"] > 0 and run.data.metrics["energy/duration_s"] > 0
    # No half-written outputs: the stage's model dir, metrics and epoch history are not there.
    for p in (paths.model_dir("mlp"), paths.train_metrics("mlp"), paths.epoch_plot("mlp")):
        assert not (workdir / p).exists(), p


def test_exception_inside_the_model_fails_the_run_with_its_error_and_energy(tiny_params, prepared, meter, monkeypatch):
    from pipeline.models.mlp import MLP

    calls = {"n": 0}
    forward = MLP.forward

    def broken(self, x):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("simulated fault inside the model")
        return forward(self, x)

    monkeypatch.setattr(MLP, "forward", broken)
    params = tiny_params()
    with pytest.raises(RuntimeError, match="simulated fault"):
        train_family(params, "mlp", meter, prepared)
    (run,) = _runs(params)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: simulated fault inside the model"
    assert run.data.metrics["energy/total_j"] > 0


def test_diverging_trial_fails_and_the_study_goes_on(prepared, meter):
    """A trial whose loss goes NaN ends FAILED (its run too, error kept); the next trials run."""
    from pipeline.tuning.tune import tune_family

    raw = tiny_raw()
    raw["train"]["optimizer"] = "sgd"
    raw["tune"] = {"search": {"n_trials": 3, "max_epochs": 1, "startup_trials": 1, "warmup_epochs": 0,
                              "sampler": "random", "enqueue_baseline": False},
                   "space": {"train": {"lr": [1e30, 0.01]}, "mlp": {"width": [16]}}}
    params = parse_params(raw)
    m = tune_family(params, "mlp", meter, prepared)
    assert m["trials_complete"] + m["trials_failed"] == 3 and m["trials_failed"] >= 1 and m["trials_complete"] >= 1
    failed = _runs(params, "tags.role = 'trial' and tags.trial_state = 'FAILED'")
    assert len(failed) == m["trials_failed"]
    for r in failed:
        assert r.info.status == "FAILED" and r.data.tags["error"].startswith("NonFiniteLoss")
        assert r.data.metrics["energy/total_j"] > 0
    assert "RUNNING" not in {r.info.status for r in _runs(params)}
    assert m["search_energy_j"] > sum(r.data.metrics["energy/total_j"] for r in failed)  # failures are in the cost


def test_broken_energy_meter_still_completes_and_marks_the_run(tiny_params, prepared, monkeypatch, caplog):
    import codecarbon

    from pipeline.energy import UNAVAILABLE, EnergyMeter

    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("no power sensor readable")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Broken)
    params = tiny_params()
    m = train_family(params, "mlp", EnergyMeter(EnergyCfg()), prepared)
    assert m["energy_method"] == UNAVAILABLE and "energy_j" not in m  # never a silent zero
    (run,) = _runs(params)
    assert run.info.status == "FINISHED" and run.data.tags["energy_method"] == UNAVAILABLE
    assert "energy/total_j" not in run.data.metrics and run.data.metrics["energy/duration_s"] > 0
    assert any("energy measurement unavailable" in r.getMessage() for r in caplog.records)


WRITER = """
import sys
from pipeline.config import TrackingCfg
from pipeline.tracking import tracked_run
worker = sys.argv[1]
for i in range(15):
    with tracked_run(TrackingCfg(), f"writer-{worker}-{i}", {"stage": "concurrency", "worker": worker}) as run:
        run.log_params({"i": i})
        for step in range(20):
            run.log_metrics({"x": float(step)}, step=step)
        run.flush()
"""


@pytest.mark.slow
def test_concurrent_writers_lose_no_run_and_no_metric(workdir):
    """Two processes writing runs to one fresh SQLite store at once (creating it together too)."""
    env_py = [sys.executable, "-c", WRITER]
    procs = [subprocess.Popen(env_py + [str(w)], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}) for w in (1, 2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("database is locked" in o for o in outs)
    params = parse_params(tiny_raw())
    runs = _runs(params, "tags.stage = 'concurrency'")
    assert len(runs) == 30 and {r.info.status for r in runs} == {"FINISHED"}
    client, _ = client_for(params.tracking)
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "x")) == 20


def test_security_defaults():
    """Servers on 127.0.0.1; weights-only checkpoint loading; safe YAML; no pickle loading."""
    makefile = (ROOT / "Makefile").read_text()
    assert "--host 127.0.0.1" in makefile and "0.0.0.0" not in makefile
    sources = {p: p.read_text() for p in (ROOT / "pipeline").rglob("*.py")}
    for path, text in sources.items():
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, path
        assert "allow_pickle=True" not in text, path
        assert "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_a_checkpoint_with_code_is_refused(tmp_path):
    """weights_only loading rejects a pickled object that would run code."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "model.pt"
    torch.save({"w": Evil()}, bad)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        torch.load(bad, map_location="cpu", weights_only=True)
