"""Faults: signals, failures inside training, a broken energy meter, concurrent writers, and the
project's open doors. Every run ends FINISHED, FAILED or KILLED with its energy; none is lost
and none is left RUNNING."""
import signal
import subprocess
import sys
import time
from pathlib import Path

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
@pytest.mark.parametrize("signame", ["SIGTERM"])  # SIGINT: tests/test_interrupts.py, case training-epoch
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
@pytest.mark.timeout(120)
def test_a_run_whose_process_was_killed_outright_is_ended_by_the_next_command(tiny_params, workdir):
    """SIGKILL (the out-of-memory killer) leaves a run RUNNING: the next run started on the host
    ends it KILLED, saying why; a run whose process lives on (this one's), and another host's,
    stay RUNNING."""
    import os

    from pipeline import tracking

    params = tiny_params()
    holder = ("import os, signal\n"
              "from pipeline.config import parse_params\n"
              "from pipeline.tracking import tracked_run\n"
              "from tests.conftest import tiny_raw\n"
              "with tracked_run(parse_params(tiny_raw()).tracking, 'killed', {'stage': 'train'}):\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", holder], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=100)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    client, _ = client_for(params.tracking)
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    (dead,) = client.search_runs([exp.experiment_id])
    mine = client.create_run(exp.experiment_id, tags=tracking._owner()).info.run_id
    elsewhere = client.create_run(exp.experiment_id, tags={"process.host": "another-host", "process.pid": "1"}).info.run_id
    assert dead.info.status == "RUNNING" and dead.data.tags["process.pid"] != str(os.getpid())
    tracking._swept.clear()  # as in a new command
    with tracking.tracked_run(params.tracking, "next", {"stage": "evaluate"}):
        pass
    dead = client.get_run(dead.info.run_id)
    assert dead.info.status == "KILLED" and "ended without ending the run" in dead.data.tags["error"]
    assert {client.get_run(r).info.status for r in (mine, elsewhere)} == {"RUNNING"}


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


class _RunsCode:
    """A pickled object whose unpickling runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_servers_the_makefile_starts_listen_on_loopback_only():
    """Every server a make target starts binds a loopback address (the MLflow UI: 127.0.0.1),
    never 0.0.0.0: read from what make would run (``make -n``), not from the Makefile's text."""
    import ipaddress
    import re

    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1).split()
    hosts = {}
    for target in phony:
        out = subprocess.run(["make", "-n", "-s", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (target, out.stderr)
        hosts[target] = re.findall(r"--host[ =](\S+)", out.stdout)
        assert "0.0.0.0" not in out.stdout, target
    assert hosts["ui"], "make ui starts the MLflow UI with an explicit --host"
    for target, found in hosts.items():
        assert all(ipaddress.ip_address(h).is_loopback for h in found), (target, found)


def test_model_loaders_refuse_a_checkpoint_that_runs_code(workdir):
    """models/<family>/<variant>/model.pt and a compressed variant's model.pt are loaded
    weights-only: a checkpoint whose unpickling would run code is refused and the code never runs
    (the same file loaded without weights_only does run it, so the payload is live)."""
    from pipeline.compression.artifact import load_variant, save_variant
    from pipeline.errors import SavedModelError
    from pipeline.evaluation.evaluate import load_trained
    from pipeline.models.factory import ModelSpec, build_model
    from pipeline.models.saved import save_model

    marker = workdir / "pwned"
    spec = ModelSpec("mlp", (1, 40), 10, {"width": 8, "depth": 1, "dropout": 0.0})
    model = build_model(spec)
    trained, variant = paths.model_dir("mlp"), workdir / "variant"
    save_model(trained, model, spec)
    (trained / "run.json").write_text("{}")
    save_variant(variant, model, spec, {})
    evil = {k: _RunsCode(marker) for k in model.state_dict()}
    for d in (trained, variant):
        torch.save(evil, d / "model.pt")
    with pytest.raises(SavedModelError, match="model.pt: refused: it holds objects beyond tensors"):
        load_trained("mlp")
    with pytest.raises(SavedModelError, match="model.pt: refused: .*weights-only"):
        load_variant(variant)
    assert not marker.exists()
    torch.load(variant / "model.pt", weights_only=False)  # the check of the check: unsafe loading runs it
    assert marker.exists()


def test_every_weights_load_of_train_and_evaluate_is_weights_only(tiny_params, prepared, meter, monkeypatch):
    """Each torch.load the train stage (its best checkpoint) and evaluate's loader (the saved
    model) make passes weights_only=True."""
    from pipeline.evaluation.evaluate import load_trained

    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        caller = Path(sys._getframe(1).f_code.co_filename)
        calls.append((caller.relative_to(ROOT).as_posix() if caller.is_relative_to(ROOT) else str(caller),
                      kwargs.get("weights_only")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    params = tiny_params()
    train_family(params, "mlp", meter, prepared)
    load_trained("mlp")
    assert {"pipeline/training/train.py", "pipeline/models/saved.py"} <= {f for f, _ in calls}, calls
    assert all(w is True for _, w in calls), calls


def test_params_yaml_cannot_run_code(workdir, capsys):
    """params.yaml is read with a safe loader: a python/object tag is a YAML error (exit 2), its
    code never runs (an unsafe loader would run it)."""
    from pipeline import cli

    marker = workdir / "pwned"
    text = f"base: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]\n"
    (workdir / "params.yaml").write_text(text)
    assert cli.main(["prepare"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "params.yaml" in err and "python/object" in err and "Traceback" not in err
    assert not marker.exists()
    yaml.unsafe_load(text)  # the check of the check: the payload is live
    assert marker.exists()


def test_npz_data_with_pickled_objects_is_refused(tiny_params, workdir):
    """A user .npz and the prepared data are read without pickle: an object array is refused with
    a DataError naming the file, and the code its unpickling would run never runs."""
    import numpy as np

    from pipeline.data.prepare import load_prepared
    from pipeline.data.source import DataError

    marker = workdir / "pwned"
    payload = np.empty(30, dtype=object)
    payload[:] = [_RunsCode(marker) for _ in range(30)]
    np.savez(workdir / "bad.npz", x=payload, y=np.arange(30) % 3)
    with pytest.raises(DataError, match=r"bad\.npz.*not a readable \.npz"):
        prepare(tiny_params(**{"data.dataset": "npz", "data.npz.path": "bad.npz"}))
    save(prepare(tiny_params()), "mnist1d")
    data_path = paths.prepared_data("mnist1d")
    np.savez(data_path, x_train=payload)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_prepared("mnist1d")
    assert not marker.exists()
    with np.load(data_path, allow_pickle=True) as f:  # the check of the check: the payload is live
        f["x_train"]
    assert marker.exists()


def test_no_unsafe_loader_is_called_anywhere_in_the_package():
    """A backstop for code the behaviour tests above do not reach: no call in pipeline/ to
    yaml.load/unsafe_load/full_load or pickle.load(s), no np.load with allow_pickle=True, and
    every torch.load passes weights_only=True (read from the syntax tree, so a call split over
    lines or an aliased import is seen)."""
    import ast

    unsafe = {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("pickle", "load"),
              ("pickle", "loads"), ("dill", "load"), ("joblib", "load")}
    torch_loads, problems = [], []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        alias = {}  # local name -> (module, attribute) from `import x as y` / `from x import y as z`
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                alias.update({(a.asname or a.name): (a.name, None) for a in node.names})
            elif isinstance(node, ast.ImportFrom) and node.module:
                alias.update({(a.asname or a.name): (node.module, a.name) for a in node.names})
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                module = alias.get(f.value.id, (f.value.id, None))[0]
                name = (module.split(".")[0], f.attr)
            elif isinstance(f, ast.Name) and f.id in alias and alias[f.id][1]:
                name = (alias[f.id][0].split(".")[0], alias[f.id][1])
            else:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in unsafe:
                problems.append(f"{where}: {'.'.join(name)}")
            elif name == ("numpy", "load") and isinstance(kw.get("allow_pickle"), ast.Constant) \
                    and kw["allow_pickle"].value is not False:
                problems.append(f"{where}: np.load(allow_pickle={kw['allow_pickle'].value})")
            elif name == ("torch", "load"):
                torch_loads.append(where)
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
    assert not problems, problems
    assert len(torch_loads) >= 2, torch_loads  # the scan sees the loaders it guards
