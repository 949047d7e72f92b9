"""What the benchmark scripts share: the project root, the environment a pipeline command runs
in, and how a figure is printed (median [range])."""
from __future__ import annotations

import os
import statistics
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
