"""Where each stage reads and writes, relative to the working directory (DVC's stage wdir).

Shared stores (the MLflow database and artifacts) are anchored on ``DVC_ROOT`` when DVC runs the
stage: queued experiments run in temporary copies of the repo, and a store relative to the working
directory would be written there and lost.
"""
from __future__ import annotations

import os
from pathlib import Path

PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")


def store_root() -> Path:
    """Directory that holds shared stores (``mlruns/``): the repo root DVC names, else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def prepared_data(dataset: str) -> Path:
    return PREPARED_DIR / f"{dataset}.npz"


def data_card(dataset: str) -> Path:
    return PREPARED_DIR / f"{dataset}.card.json"


# A trained model of a family: the ``baseline`` from the train stage, the ``tuned`` one from the
# search. Later stages address models by (family, variant).
BASELINE, TUNED = "baseline", "tuned"
VARIANTS = (BASELINE, TUNED)


def study_dir() -> Path:
    """Default home of the Optuna studies (a shared store like mlruns/, never a DVC output)."""
    return store_root() / "optuna"


def model_dir(family: str, variant: str = BASELINE) -> Path:
    return MODELS_DIR / family / variant


def train_metrics(family: str) -> Path:
    return METRICS_DIR / "train" / f"{family}.json"


def tune_metrics(family: str) -> Path:
    return METRICS_DIR / "tune" / f"{family}.json"


def evaluate_metrics(family: str, variant: str = BASELINE) -> Path:
    return METRICS_DIR / "evaluate" / f"{family}-{variant}.json"


def epoch_plot(family: str, variant: str = BASELINE) -> Path:
    return PLOTS_DIR / "epochs" / f"{family}-{variant}.csv"


def confusion_plot(family: str, variant: str = BASELINE) -> Path:
    return PLOTS_DIR / "confusion" / f"{family}-{variant}.png"


def sweep_variant(width: str, depth: str) -> str:
    """A size-sweep point's variant, from its factors as written in params.yaml (so the names
    match the ones DVC substitutes in dvc.yaml): ``sweep-w0.5-d1``."""
    return f"sweep-w{width}-d{depth}"


def sweep_metrics(family: str, variant: str) -> Path:
    return METRICS_DIR / "sweep" / f"{family}-{variant}.json"


def compressed_dir(family: str, source: str = BASELINE) -> Path:
    """The compress stage's variants of one trained model, one subdirectory per variant."""
    return MODELS_DIR / family / "compressed" / source


def compress_metrics(family: str, source: str = BASELINE) -> Path:
    return METRICS_DIR / "compress" / f"{family}-{source}.json"
