"""What the benchmark scripts share: the project root, the environment a pipeline command runs
in, and how a figure is printed (median [range], or median [quartiles])."""
from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def timed_run(argv: list[str], cwd: Path, env: dict, timeout: float = 3600) -> tuple[float, str]:
    """(wall seconds, stdout) of a command that must succeed; its output ends the script if not."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall, proc.stdout
