"""Commands run in a warm server (pipeline.warm): the same output, files and exit status as in a
process of their own; Ctrl-C reaches them; a command whose process dies takes its child with it;
a server serves only commands of its own environment, and leaves when idle."""
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline import paths, warm
from pipeline.config import parse_params
from pipeline.tracking import client_for

from .conftest import sqlite_count, tiny_raw, warm_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    """A started server and the environment of the commands it serves."""
    with warm_env() as env:
        yield env, warm.start(env)


def _project(d: Path, **overrides) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "params.yaml").write_text(yaml.safe_dump(tiny_raw(**overrides)))
    return d


def _pipeline(argv, cwd, env, **kw):
    return subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240, **kw)


def _served(log: Path, argv: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f": {argv}: exit" in line]


def test_a_served_command_writes_what_it_would_alone(server, tmp_path):
    env, log = server
    cold_env = {**env, "PIPELINE_WARM": "0"}
    outputs = {}
    for name, run_env in (("warm", env), ("cold", cold_env)):
        d = _project(tmp_path / name)
        done = _pipeline(["prepare"], d, run_env)
        assert done.returncode == 0, done.stderr
        data = d / "data" / "prepared" / "mnist1d.npz"
        outputs[name] = (done.stdout.replace(str(d), "<dir>"), hashlib.sha256(data.read_bytes()).hexdigest())
        bad = _pipeline(["train", "--family", "nope"], d, run_env)
        outputs[name + "-bad"] = (bad.returncode, bad.stderr.replace(str(d), "<dir>"))
    assert outputs["warm"] == outputs["cold"]
    assert outputs["warm-bad"] == outputs["cold-bad"] and outputs["warm-bad"][0] == 2
    # ... and it ran in the server, not in a process of its own
    assert len(_served(log, "prepare")) == 1 and len(_served(log, "train --family nope")) == 1


def test_search_workers_are_served_commands_too(server, tmp_path):
    """``tune.search.n_workers: 2``: the second worker is a command of its own (``tune-worker``),
    a fork of the server like the ``tune`` that started it, not an interpreter importing torch
    again; its trials count towards the study's N and say they ran in the server."""
    env, log = server
    d = _project(tmp_path, **{"tune.search.n_trials": 3, "tune.search.n_workers": 2})
    assert _pipeline(["prepare"], d, env).returncode == 0
    done = _pipeline(["tune", "--family", "mlp"], d, env)
    assert done.returncode == 0, done.stderr
    assert "tuned mlp: 3 trials" in done.stdout
    workers = [line for line in log.read_text().splitlines() if ": tune-worker " in line]
    assert len(workers) == 1 and " --worker 1: exit 0 after " in workers[0], workers
    trials = [r for r in _runs(d) if r.data.tags.get("role") == "trial"]
    assert {r.data.tags["launch"] for r in trials} == {"warm server"}
    assert len(trials) >= 3 and {r.data.tags["worker"] for r in trials} <= {"0", "1"}
    job = Path(workers[0].split(": tune-worker ")[1].split()[0])
    assert job.name == "search-worker.json" and not job.parent.exists()  # the job file, with the storage URL, is gone


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(what)
        time.sleep(0.1)


def _training(server, d: Path):
    """A long MLP training started through the server, once its first epoch is logged."""
    env, _ = server
    _project(d, **{"train.max_epochs": 500, "train.early_stopping_patience": 0})
    assert _pipeline(["prepare"], d, env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--family", "mlp"], cwd=d, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    db = d / "mlruns" / "mlflow.db"
    _wait_for(lambda: sqlite_count(db, "SELECT count(*) FROM metrics WHERE key = 'val/acc'") > 0
              or proc.poll() is not None, 120, "no epoch logged")
    assert proc.poll() is None, proc.communicate()[0]
    return proc


def _runs(d: Path):
    cwd = os.getcwd()
    os.chdir(d)
    try:
        params = parse_params(yaml.safe_load((d / "params.yaml").read_text()))
        client, _ = client_for(params.tracking)
        exp = client.get_experiment_by_name(params.tracking.experiment_name)
        return client.search_runs([exp.experiment_id])
    finally:
        os.chdir(cwd)


def test_ctrl_c_reaches_the_command_in_the_server(server, tmp_path):
    proc = _training(server, tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the command's own group
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    (run,) = _runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.metrics["energy/total_j"] > 0
    assert run.data.tags["launch"] == "warm server"  # in its fingerprint
    assert not (tmp_path / paths.model_dir("mlp")).exists()  # no half-written output


def test_a_command_whose_process_dies_ends_in_the_server_too(server, tmp_path):
    proc = _training(server, tmp_path)
    proc.kill()  # SIGKILL: nothing forwarded; the server sees the connection close
    proc.communicate(timeout=30)
    db = tmp_path / "mlruns" / "mlflow.db"
    _wait_for(lambda: sqlite_count(db, "SELECT count(*) FROM runs WHERE status = 'RUNNING'") == 0, 30,
              "the training went on without its command")
    (run,) = _runs(tmp_path)
    assert run.info.status == "KILLED"
    _, log = server
    _wait_for(lambda: _served(log, "train --family mlp")[-1:] and "exit 130" in _served(log, "train --family mlp")[-1],
              30, "the server did not reap the child")


def test_a_command_whose_server_dies_ends_and_says_so():
    with warm_env() as env:
        log = warm.start(env)
        server_pid = int(log.read_text().split("pid ", 1)[1].split()[0])
        with tempfile.TemporaryDirectory() as d:
            proc = _training((env, log), Path(d))
            os.kill(server_pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 1 and "the warm server lost the command" in out
            db = Path(d) / "mlruns" / "mlflow.db"  # the child was sent SIGTERM: its run ends KILLED
            _wait_for(lambda: sqlite_count(db, "SELECT count(*) FROM runs WHERE status = 'RUNNING'") == 0, 30,
                      "the training went on without its server")
            (run,) = _runs(Path(d))
            assert run.info.status == "KILLED"


def test_the_server_key_follows_the_environment_less_per_command_variables(monkeypatch):
    key = warm.server_key()
    for name, value in (("DVC_EXP_NAME", "exp-1"), ("MLFLOW_RUN_ID", "abc"), ("PIPELINE_WORK_LOG", "/x")):
        monkeypatch.setenv(name, value)
        assert warm.server_key() == key, name
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # read at import: another server
    assert warm.server_key() != key


def test_a_key_whose_server_refused_runs_commands_alone_and_starts_no_other(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    sock = warm.socket_dir() / f"{warm.server_key()}.sock"
    sock.with_suffix(".refused").write_text("not serving: a test\n")
    assert warm.run_command(["--help"]) is None
    assert sorted(p.name for p in sock.parent.iterdir()) == [sock.with_suffix(".refused").name]


def test_a_socket_folder_others_can_enter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / f"pipeline-warm-{os.getuid()}").mkdir(mode=0o755)
    (tmp_path / f"pipeline-warm-{os.getuid()}").chmod(0o755)
    with pytest.raises(OSError, match="private"):
        warm.socket_dir()
    assert warm.run_command(["--help"]) is None  # the command runs alone


def test_an_idle_server_leaves_and_cleans_up():
    with warm_env() as env:
        env[warm.IDLE_ENV] = "3"
        log = warm.start(env)
        sock = log.with_suffix(".sock")
        _wait_for(lambda: not sock.exists(), 60, "the idle server did not leave")
        assert not log.exists()  # a server that went well leaves no log


def test_a_socket_path_over_the_kernels_limit_runs_the_command_alone(tmp_path, monkeypatch):
    home = tmp_path / ("x" * (warm.SOCKET_PATH_MAX - len(str(tmp_path))))
    home.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    assert warm.run_command(["prepare"]) is None
    assert not list(warm.socket_dir().iterdir())  # and starts no server


def test_prepare_starts_the_server_and_runs_beside_its_start(tmp_path):
    """The first command of a repro, prepare, needs little of what a server imports: where none
    listens it starts one for the commands after it and runs in its own process at once."""
    d = _project(tmp_path / "p")
    with warm_env() as env:
        done = _pipeline(["prepare"], d, env)
        assert done.returncode == 0, done.stderr
        assert (d / "data" / "prepared" / "mnist1d.npz").is_file()
        (log,) = warm.servers_of(env)  # started by prepare, which did not wait for it
        assert not _served(log, "prepare")
        _wait_for(lambda: " ready in " in log.read_text(), 180, "the server prepare started never got ready")
        assert _pipeline(["prepare"], d, env).returncode == 0  # a server listens now: it serves prepare too
        assert len(_served(log, "prepare")) == 1
