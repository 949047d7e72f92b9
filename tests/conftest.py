import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.config import EnergyCfg, parse_params

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "base": {"seed": 7},
    "data": {"dataset": "mnist1d", "mnist1d": {"num_samples": 600}},
    "models": {
        "mlp": {"width": 32, "depth": 1},
        "cnn": {"channels": 8, "depth": 2},
        "rnn": {"hidden_size": 16},
        "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 1, "patch_size": 4},
    },
    "train": {"max_epochs": 2, "batch_size": 64, "lr": 0.003, "early_stopping_patience": 0, "target_val_acc": 0.2},
    "evaluate": {"latency_samples": 10, "energy_min_duration_s": 0.2},
    "tune": {"search": {"n_trials": 2, "max_epochs": 1, "startup_trials": 1, "warmup_epochs": 0}},
    "sweep": {"families": ["mlp"], "widths": [0.5], "depths": [1]},
    "compress": {
        "prune": {"sparsity": [0.5], "finetune_epochs": 1},
        "distill": {"epochs": 1, "student": {"mlp": {"width": 8}, "cnn": {"channels": 4}, "rnn": {"hidden_size": 8},
                                             "transformer": {"d_model": 8}}},
    },
}


def make_dvc_repo(d: Path, overrides: dict):
    """A git + DVC repo in ``d`` with this project's code, dvc.yaml and params.yaml with
    ``overrides`` merged on top; returns (the environment to run dvc in, git with an identity)."""
    import shutil
    import subprocess
    import sys

    import yaml

    from pipeline.config import deep_merge

    d.mkdir(parents=True, exist_ok=True)
    for code in ("pipeline", "examples", "scripts"):
        shutil.copytree(ROOT / code, d / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d / "dvc.yaml")
    raw = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    (d / ".gitignore").write_text("/mlruns/\n/optuna/\n__pycache__/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=d, env=env, check=True, capture_output=True, timeout=120)
    shutil.copy(ROOT / ".dvcignore", d / ".dvcignore")
    for cmd in (git + ["add", "-A"], git + ["commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=d, env=env, check=True, capture_output=True, timeout=120)
    return env, git


def tiny_raw(**overrides) -> dict:
    import copy

    raw = copy.deepcopy(TINY)
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


@pytest.fixture
def tiny_params():
    def make(**overrides):
        return parse_params(tiny_raw(**overrides))

    return make


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow store; no DVC or MLflow env leaking in."""
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def meter():
    """One energy meter for the session: CodeCarbon's hardware probe costs ~2 s per process."""
    from pipeline.energy import EnergyMeter

    return EnergyMeter(EnergyCfg()).prewarm()


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # keep HEAVIEST_FIRST's order (below)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # The commands tests start run in their own processes: most tests give theirs an environment
    # of their own, and each would start a warm server of its own (pipeline.warm) for one command.
    # tests/test_warm.py runs commands in a server; tests/test_e2e.py runs its dvc repro through one.
    os.environ.setdefault("PIPELINE_WARM", "0")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Workers side by side: one torch thread each, for them and the processes they start
        # (two processes taking every core each ran 24-35x slower on 2 cores).
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# The modules that take longest (seconds of `pytest -m "" -n 2 --durations=0`, 2 idle cores, summed
# per module), heaviest first. Each module runs on one worker (`--dist loadscope`: its prepared repo
# is built once), and modules are handed out in collection order: the long ones first keeps the two
# workers finishing together (xdist's own reordering, by number of tests, is turned off for it).
HEAVIEST_FIRST = ("test_interrupts", "test_e2e", "test_mlflow_server", "test_tune", "test_scale_out",
                  "test_warm", "test_compress", "test_faults")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        module = item.path.stem
        return HEAVIEST_FIRST.index(module) if module in HEAVIEST_FIRST else len(HEAVIEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a module stays


def sqlite_count(db: Path, sql: str) -> int:
    """A count from a SQLite store another process is writing (0 before its tables exist)."""
    import sqlite3

    if not db.is_file():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


@pytest.fixture
def chromium():
    """Headless system Chromium under Playwright (tests/browser.py); a missing browser fails the test."""
    from .browser import launch

    with launch() as browser:
        yield browser


@pytest.fixture(autouse=True)
def _family_registry_restored():
    """Params naming a family by import path register it for the process: each test starts from
    the families registered before it, as a new command would."""
    from pipeline.models import family

    family.families()  # the built-ins register on the first look-up
    before = dict(family._FAMILIES._items)
    yield
    family._FAMILIES._items.clear()
    family._FAMILIES._items.update(before)


@pytest.fixture(autouse=True)
def _signals_restored():
    """Stage code run in-process installs the pipeline's SIGINT/SIGTERM handlers; give pytest its
    own back after each test, so Ctrl-C still stops the test run."""
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


_SHARED_WARM_HOME: list[str] = []


def shared_warm() -> dict:
    """The variables that run a command in the warm servers (pipeline.warm) this test process shares
    among its tests: ``PIPELINE_WARM=1`` and one private socket folder, so that commands with the
    same environment (what a server is keyed on) reuse one server instead of importing torch,
    Lightning and MLflow each. Tests of what a signal does to a command's own process keep
    ``PIPELINE_WARM=0`` (the default here). The servers are stopped at the end of the session."""
    import tempfile

    if not _SHARED_WARM_HOME:
        _SHARED_WARM_HOME.append(tempfile.mkdtemp(prefix="warm-", dir="/tmp"))
    return {"PIPELINE_WARM": "1", "XDG_RUNTIME_DIR": _SHARED_WARM_HOME[0]}


def pytest_unconfigure(config):
    if _SHARED_WARM_HOME:
        import shutil

        from pipeline import warm

        warm.stop({"XDG_RUNTIME_DIR": _SHARED_WARM_HOME[0]})
        shutil.rmtree(_SHARED_WARM_HOME[0], ignore_errors=True)


@contextmanager
def warm_env(base: dict | None = None):
    """``base`` (this environment, less DVC's and MLflow's variables) with its pipeline commands
    run in a warm server of their own (pipeline.warm): a private socket folder, short enough for a
    Unix socket's path. Its servers are stopped and the folder removed on leaving."""
    import shutil
    import tempfile

    from pipeline import warm

    if base is None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING"))}
    home = tempfile.mkdtemp(prefix="warm-", dir="/tmp")
    env = {**base, "PIPELINE_WARM": "1", "XDG_RUNTIME_DIR": home}
    try:
        yield env
    finally:
        warm.stop(env)
        shutil.rmtree(home, ignore_errors=True)
