"""An exclusive lock on a file, across processes (``fcntl.flock``), for the few moments where
two pipeline processes must not race: creating the SQLite stores (MLflow's and Optuna's schema
migrations are not safe to run twice at once)."""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
