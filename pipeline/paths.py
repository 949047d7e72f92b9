"""Where each stage reads and writes, relative to the working directory (DVC's stage wdir).

Shared stores (the MLflow database and artifacts) are anchored on ``DVC_ROOT`` when DVC runs the
stage: queued experiments run in temporary copies of the repo, and a store relative to the working
directory would be written there and lost.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")


def store_root() -> Path:
    """Directory that holds shared stores (``mlruns/``): the repo root DVC names, else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def store_lock(url: str, name: str = ".init.lock") -> AbstractContextManager:
    """An exclusive lock across processes, for the few moments where two pipeline processes must
    not race: creating the SQLite stores (MLflow's and Optuna's schema migrations are not safe to
    run twice at once), or a study's parent run. Beside a ``sqlite:///`` store: the file ``name``
    (the ``filelock`` package). On a PostgreSQL database shared by several machines: a
    PostgreSQL advisory lock keyed by ``name``, released by the server if the holder dies. Other
    URLs (an MLflow server, which serialises its own writes) get a no-op context."""
    if url.startswith("postgresql"):
        return _advisory_lock(url, name)
    if not url.startswith("sqlite:///"):
        return nullcontext()
    from filelock import FileLock

    lock = Path(url.removeprefix("sqlite:///")).parent / name
    lock.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(lock)


@contextmanager
def _advisory_lock(url: str, name: str) -> Iterator[None]:
    import hashlib

    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as con:
            con.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                con.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def _json_default(value: Any) -> Any:
    """numpy/torch scalars and arrays as numbers and lists; anything else JSON has no type for
    (dates, paths) as text."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


def write_json(data: Any, path: Path) -> Path:
    """Write ``data`` as indented JSON with a final newline, creating the parent directories: the
    one writer of the stages' metrics, cards, specs and summaries. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


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
