"""What the benchmark scripts share: the project root, the environment a pipeline command runs
in, a scratch git + DVC copy of the project, and how a figure is printed (median [range], or median
[quartiles])."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]  # commits in scratch projects


def pipeline_env(**extra: str) -> dict[str, str]:
    """This environment, minus DVC's and MLflow's variables, with the project importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING"))}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def summary(values: list[float], unit: str, digits: int = 1) -> str:
    """``median unit [min-max]``, or ``not measured`` for no values."""
    if not values:
        return "not measured"
    return f"{statistics.median(values):.{digits}f} {unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); one value is all three."""
    if len(values) < 2:
        return (values[0],) * 3
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def trial_workspace(params, prefix: str):
    """(prepared data, a primed energy meter) for running the pipeline's trials in this process:
    the data prepared in the project, then a temporary working directory with its own MLflow store
    (no DVC or MLflow variables leaking in), Optuna's per-trial logging off."""
    import optuna

    from pipeline.data.prepare import prepare
    from pipeline.energy import EnergyMeter

    prepared = prepare(params)
    os.chdir(tempfile.mkdtemp(prefix=prefix))
    for var in ("DVC_ROOT", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return prepared, EnergyMeter(params.energy).prewarm()


def with_search(params, **changes):
    """``params`` with ``tune.search`` keys changed (validated)."""
    search = type(params.tune.search).model_validate({**params.tune.search.model_dump(), **changes})
    return params.model_copy(update={"tune": params.tune.model_copy(update={"search": search})})


def timed_run(argv: list[str], cwd: Path, env: dict, timeout: float = 3600) -> tuple[float, str]:
    """(wall seconds, stdout) of a command that must succeed; its output ends the script if not."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall, proc.stdout


def scratch_project(prefix: str, profiles: list[Path], extra: Path | None = None) -> tuple[Path, dict[str, str]]:
    """A scratch git + DVC project in a temporary folder: this project's code, dvc.yaml and
    params.yaml with ``profiles`` (then the params file ``extra``) merged on top by ``python -m
    pipeline apply-profile``, committed. Returns it and the environment to run commands in."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    env = pipeline_env(DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    for code in ("pipeline", "examples", "scripts"):
        shutil.copytree(ROOT / code, d / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    merged = [str(p.resolve()) for p in profiles] + ([str(extra)] if extra else [])
    if merged:
        timed_run([sys.executable, "-m", "pipeline", "apply-profile", *merged], d, env)
    (d / ".gitignore").write_text("/mlruns/\n/optuna/\n__pycache__/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        timed_run(cmd, d, env)
    shutil.copy(ROOT / ".dvcignore", d / ".dvcignore")
    for cmd in (GIT + ["add", "-A"], GIT + ["commit", "-qm", "init"]):
        timed_run(cmd, d, env)
    return d, env


def done_with(d: Path, keep: bool) -> None:
    """Remove the scratch project ``d``, or say where it is kept."""
    if keep:
        print(f"kept: {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


def stage_count(d: Path, env: dict) -> int:
    """How many stages ``dvc stage list`` finds in project ``d``."""
    listed = subprocess.run(["dvc", "stage", "list"], cwd=d, env=env, capture_output=True, text=True, check=True)
    return len(listed.stdout.splitlines())
