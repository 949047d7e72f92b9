"""Training on several processes (DDP on the CPU over gloo, as on GPUs over NCCL), and the
device params checked against the machine.

A DDP run is one real ``python -m pipeline train`` whose Lightning launcher starts the second
rank by running the same command again: one MLflow run (rank 0 logs), validation figures over
every rank's share of the split, the model saved once and loadable like any other, the energy of
both processes summed (each rank's beside the total), and -- when a rank fails or Ctrl-C comes --
the run ended FAILED or KILLED, no process left behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError, parse_params

from .conftest import ROOT, make_dvc_repo, shared_warm, sqlite_count, tiny_raw, warm_env

EXIT_WITHIN_S = 10

# A model whose forward fails in rank 1 after a few training steps (a user family by import path).
RANK_FAILS = '''
import os
from torch import nn


class RankFails(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.linear = nn.Linear(input_shape[-1] * input_shape[0], num_classes)
        self.steps = 0

    def forward(self, x):
        self.steps += self.training
        if os.environ.get("LOCAL_RANK") == "1" and self.steps > 3:
            raise RuntimeError("rank 1 failed on purpose")
        return self.linear(x.flatten(1))
'''


def _raw(**train) -> dict:
    raw = tiny_raw(**{"train.max_epochs": 2})
    raw["train"].update({"accelerator": "cpu", "devices": 2, **train})
    raw["families"] = ["mlp"]
    return raw


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A folder with prepared data (copied into each case)."""
    from pipeline.data.prepare import prepare, save

    d = tmp_path_factory.mktemp("ddp-data")
    cwd = Path.cwd()
    os.chdir(d)
    try:
        params = parse_params(_raw())
        save(prepare(params), params.data.dataset)
    finally:
        os.chdir(cwd)
    return d / "data"


def _case(tmp_path: Path, prepared: Path, raw: dict) -> Path:
    shutil.copytree(prepared, tmp_path / "data")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DVC_", "MLFLOW_TRACKING", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _train(case: Path, family: str = "mlp", env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--family", family], cwd=case,
                            env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _processes_in(case: Path) -> list[int]:
    """Processes whose working directory is ``case`` (the ranks, while they live)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == case:
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _no_process_left(case: Path, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while _processes_in(case) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_in(case) == [], "a rank outlived the run"


def _runs(case: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{case / 'mlruns' / 'mlflow.db'}")
    exps = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in exps]) if exps else []


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("warm", [False, True], ids=["alone", "warm"])
def test_ddp_on_two_cpu_processes_is_one_run_that_counts_both(tmp_path, prepared, warm):
    """Also with the command and both ranks in a warm server (pipeline.warm): one server serves
    them all (a rank's environment differs only in what Lightning sets for it)."""
    import torch

    from pipeline import warm as warm_server
    from pipeline.data.prepare import load_prepared
    from pipeline.models.saved import load_model

    case = _case(tmp_path, prepared, _raw())
    with warm_env(_env()) if warm else nullcontext(_env()) as env:
        proc = _train(case, env=env)
        out, _ = proc.communicate(timeout=200)
        assert proc.returncode == 0, out
        _no_process_left(case)
        if warm:
            (log,) = warm_server.servers_of(env)
            assert log.read_text().count("train --family mlp: exit 0") == 2  # the command and rank 1

    _, runs = _runs(case)
    assert len(runs) == 1, "only rank 0 logs"
    run = runs[0]
    assert run.info.status == "FINISHED"
    p, m, tags = run.data.params, run.data.metrics, run.data.tags
    assert (p["compute.world_size"], p["compute.strategy"], p["compute.accelerator"]) == ("2", "ddp", "cpu")
    assert m["energy/processes"] == 2 and tags["energy_summed"].startswith("2 processes")
    # Both processes were measured, and the total is their sum.
    assert m["energy/rank0_j"] > 0 and m["energy/rank1_j"] > 0
    assert m["energy/total_j"] == pytest.approx(m["energy/rank0_j"] + m["energy/rank1_j"], rel=1e-6)

    # The saved model loads like a single-process one, and the validation accuracy logged for the
    # kept epoch is its accuracy on the whole validation split (not on rank 0's half).
    model, _ = load_model(case / "models" / "mlp" / "baseline")
    cwd = Path.cwd()
    os.chdir(case)
    try:
        arrays = load_prepared("mnist1d").arrays
    finally:
        os.chdir(cwd)
    with torch.no_grad():
        pred = model(torch.from_numpy(arrays["x_val"]).float()).argmax(1).numpy()
    assert m["final/val_acc"] == pytest.approx(float((pred == arrays["y_val"]).mean()), abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ctrl_c_during_ddp_training_ends_the_run_killed_and_every_rank(tmp_path, prepared):
    case = _case(tmp_path, prepared, _raw(max_epochs=500, batch_size=16))
    proc = _train(case)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:  # until an epoch is recorded
        if sqlite_count(case / "mlruns" / "mlflow.db", "SELECT COUNT(*) FROM metrics WHERE key = 'energy/epoch_j'"):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - sent < EXIT_WITHIN_S, out
    assert proc.returncode == 130, out
    _no_process_left(case)
    _, runs = _runs(case)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].data.metrics["energy/total_j"] > 0
    assert not (case / "models" / "mlp" / "baseline").exists(), "an interrupted stage leaves no output"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_failing_rank_fails_the_run_and_leaves_no_process(tmp_path, prepared):
    raw = _raw(max_epochs=50)
    raw["families"] = ["rankfails"]
    raw["models"]["rankfails"] = {"target": "rank_fails:RankFails"}
    case = _case(tmp_path, prepared, raw)
    (case / "rank_fails.py").write_text(RANK_FAILS)
    proc = _train(case, "rankfails")
    out, _ = proc.communicate(timeout=200)
    assert proc.returncode != 0, out
    _no_process_left(case, within_s=40)
    _, runs = _runs(case)
    assert [r.info.status for r in runs] in (["FAILED"], ["KILLED"]), out
    assert runs[0].data.tags.get("error")


@pytest.mark.parametrize("train, key, says", [
    ({"accelerator": "gpu"}, "train.accelerator", "sees none"),
    ({"precision": "16-mixed", "accelerator": "cpu"}, "train.precision", "needs a CUDA GPU"),
    ({"devices": [0, 1], "accelerator": "cpu"}, "train.devices", "names GPUs"),
])
def test_devices_that_are_not_here_are_errors_naming_the_key(train, key, says):
    from pipeline.compute import resolve_devices

    if train.get("accelerator") == "gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    with pytest.raises(ParamsError, match=rf"{key}: .*{says}"):
        resolve_devices(parse_params(tiny_raw(**{f"train.{k}": v for k, v in train.items()})).train)


@pytest.mark.parametrize("train, key", [({"precision": "64"}, "precision"), ({"devices": 0}, "devices"),
                                         ({"threads": 0}, "threads"), ({"strategy": "horovod"}, "strategy"),
                                         ({"num_nodes": 0}, "num_nodes"), ({"accelerator": "tpu"}, "accelerator")])
def test_bad_device_params_are_rejected_when_params_load(train, key):
    with pytest.raises(ParamsError, match=rf"train\.{key}"):
        parse_params(tiny_raw(**{f"train.{k}": v for k, v in train.items()}))


@pytest.mark.parametrize("asked, trained_on, says", [
    ("cuda", "cpu", r"evaluate.device: cuda, but torch .* sees 0 CUDA GPU"),
    ("train", "cuda", r"evaluate.device: train \(the model was trained on cuda\), but .* sees 0 CUDA GPU"),
    ("mps", "cpu", r"evaluate.device: mps, but torch sees no Apple GPU"),
])
def test_an_evaluation_device_that_is_not_here_is_an_error_naming_the_key(asked, trained_on, says):
    import torch

    from pipeline.compute import resolve_eval_device

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ParamsError, match=says):
        resolve_eval_device(asked, trained_on)
    assert resolve_eval_device("train", "cpu") == resolve_eval_device("cpu", "cuda") == "cpu"
    with pytest.raises(ParamsError, match=r"evaluate\.device"):
        parse_params(tiny_raw(**{"evaluate.device": "tpu"}))


def test_a_gpu_asked_for_where_there_is_none_fails_before_any_run(tmp_path, prepared):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    case = _case(tmp_path, prepared, _raw(accelerator="gpu", devices=1))
    out = subprocess.run([sys.executable, "-m", "pipeline", "train", "--family", "mlp"], cwd=case, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "train.accelerator: gpu asked for" in out.stderr
    assert not (case / "mlruns").exists() and not (case / "models").exists()


def test_one_process_and_explicit_threads_are_recorded(workdir, tiny_params, meter):
    import torch

    from pipeline.data.prepare import load_prepared, prepare, save
    from pipeline.training.train import train_family

    params = tiny_params(**{"train.threads": 1, "train.accelerator": "cpu", "train.max_epochs": 1})
    save(prepare(params), params.data.dataset)
    before = torch.get_num_threads()
    try:
        m = train_family(params, "mlp", meter, load_prepared(params.data.dataset))
    finally:
        torch.set_num_threads(before)
    assert m["threads"] == 1 and m["energy_processes"] == 1
    _, runs = _runs(workdir)
    p, tags = runs[0].data.params, runs[0].data.tags
    assert (p["compute.threads"], p["compute.world_size"], p["compute.precision"]) == ("1", "1", "32-true")
    assert tags["threads_policy"] == "train.threads"


def test_cpu_slots_count_the_processes_computing_and_free_a_dead_one_s(tmp_path):
    """``train.threads: auto`` divides the cores by the processes holding a CPU slot: a slot
    held by another process counts, and is free again once that process is killed."""
    from pipeline.compute import CpuSlots

    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from pipeline.compute import CpuSlots; "
         f"s = CpuSlots(Path({str(tmp_path)!r})); s.claim(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = CpuSlots(tmp_path)
        assert mine.active() == 2  # the other process, and this one about to compute
        assert mine.claim() and mine.active() == 2 and not mine.claim()
        holder.kill()
        holder.wait(timeout=10)
        assert mine.active() == 1
        mine.release()
        assert CpuSlots(tmp_path).active() == 1
    finally:
        holder.kill()


def test_auto_threads_divide_the_cores_among_the_processes_computing(tmp_path, monkeypatch):
    import torch

    from pipeline import compute

    monkeypatch.setattr(compute, "_OMP_NUM_THREADS", "")
    monkeypatch.setattr(compute, "cores", lambda: 8)
    monkeypatch.setattr(compute, "_slots", compute.CpuSlots(tmp_path))
    others = [compute.CpuSlots(tmp_path) for _ in range(3)]
    before = torch.get_num_threads()
    try:
        with compute.cpu_slot():
            assert compute.share_threads("auto") == (8, "auto: 8 cores / 1 processes computing")
            assert compute.share_threads("auto", beside=2)[0] == 4  # a second rank is starting
            for o in others:
                o.claim()
            assert compute.share_threads("auto") == (2, "auto: 8 cores / 4 processes computing")
            assert torch.get_num_threads() == 2
            assert compute.share_threads(3) == (3, "train.threads")
        monkeypatch.setattr(compute, "_OMP_NUM_THREADS", "1")
        assert compute.share_threads("auto")[0] == 1
    finally:
        for o in others:
            o.release()
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_prepared_data_and_models_reach_another_clone_through_a_dvc_remote(tmp_path):
    """Machine A runs prepare and train, pushes to a DVC remote (a local folder here; s3://,
    ssh://... the same way); machine B clones, pulls, and ``dvc repro`` has nothing to redo."""
    raw = tiny_raw(**{"train.max_epochs": 1})
    raw["families"] = ["mlp"]
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    env, git = make_dvc_repo(a, raw)
    env.update(shared_warm())

    def run(cmd, cwd):
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
        return out.stdout

    run(["dvc", "repro", "train@mlp"], a)
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], a)
    run(git + ["add", "-A"], a)
    run(git + ["commit", "-qm", "trained mlp"], a)
    run(["dvc", "push"], a)
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    model = Path("models") / "mlp" / "baseline" / "model.pt"
    assert not (b / model).exists() and not (b / "data" / "prepared").exists()
    run(["dvc", "pull", "--with-deps", "train@mlp"], b)
    assert (b / model).read_bytes() == (a / model).read_bytes()
    assert "Data and pipelines are up to date" in run(["dvc", "status", "train@mlp"], b)
    out = run(["dvc", "repro", "train@mlp"], b)
    assert "Running stage" not in out and not (b / "mlruns").exists(), out


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_queued_grid_of_four_runs_two_at_a_time_each_with_its_runs_and_energy(tmp_path):
    """``dvc exp run --queue`` of a 2 x 2 grid (learning rate x width) of ``train@mlp``, then
    ``dvc queue start -j 2``: the four experiments succeed, two at a time, each with its own
    MLflow run (in the repo's one store, tagged with the experiment's name) and energy, and
    ``dvc exp show`` lists all four with accuracy and energy. (One stage per experiment keeps CI
    short; ``benchmarks/queue_grid.py`` runs the grid through evaluate.)"""
    import csv
    import io

    raw = tiny_raw(**{"train.max_epochs": 1})
    raw["families"] = ["mlp"]
    env, git = make_dvc_repo(tmp_path, raw)
    env.update(shared_warm())

    def run(*cmd, timeout=240):
        out = subprocess.run(list(cmd), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
        return out.stdout

    run("dvc", "repro", "prepare")  # the experiments find the prepared data in the cache
    run(*git, "add", "-A")
    run(*git, "commit", "-qm", "prepared")
    run("dvc", "exp", "run", "--queue", "train@mlp", "-S", "train.lr=0.002,0.01",
        "-S", "models.mlp.width=16,32")
    with (tmp_path / ".dvc" / "tmp" / "queue-start.log").open("w") as log:  # its workers outlive it: no pipe
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=tmp_path, env=env, stdout=log, stderr=log,
                       check=True, timeout=60)
    try:
        deadline = time.monotonic() + 360
        while True:
            status = run("dvc", "queue", "status")
            if not any(s in status for s in ("Queued", "Running")):
                break
            assert time.monotonic() < deadline, status
            time.sleep(3)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert status.count("Success") == 4 and "Failed" not in status, status

    rows = [r for r in csv.DictReader(io.StringIO(run("dvc", "exp", "show", "--csv")))
            if r["Experiment"] and r["typ"] != "baseline"]
    assert len(rows) == 4, rows
    acc = next(k for k in rows[0] if k.endswith("val_acc"))
    energy = next(k for k in rows[0] if k.endswith("energy_j"))
    assert all(float(r[acc]) > 0 and float(r[energy]) > 0 for r in rows), rows
    grid = {(r[next(k for k in r if k.endswith("train.lr"))], r[next(k for k in r if k.endswith("mlp.width"))])
            for r in rows}
    assert grid == {(lr, w) for lr in ("0.002", "0.01") for w in ("16", "32")}

    client, runs = _runs(tmp_path)  # the repo's store: DVC names it to every queued experiment
    by_exp: dict[str, list] = {}
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.metrics.get("energy/total_j", 0) > 0, r.data.tags
        by_exp.setdefault(r.data.tags["dvc_exp_name"], []).append(r.data.tags["stage"])
    assert {r["Experiment"] for r in rows} == set(by_exp)
    assert all(stages == ["train"] for stages in by_exp.values()), by_exp
