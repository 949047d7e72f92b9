"""``python -m pipeline server`` (``make server``): the MLflow tracking server that several
processes or machines log to, with PostgreSQL as its backend store and the artifacts proxied by
the server into a local folder (clients need no access to that folder, only to the server).

Point the pipeline at it with ``MLFLOW_TRACKING_URI=http://<host>:<port>`` or
``tracking.tracking_uri``. The database is created when missing.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pipeline.errors import StoreError
from pipeline.tracking import redact

DEFAULT_BACKEND = "postgresql://postgres@127.0.0.1:5432/mlflow"


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database ``url`` names when it does not exist (connecting to the
    server's ``postgres`` database). True when it was created."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    target = make_url(url)
    if not target.drivername.startswith("postgresql"):
        return False
    admin = target.set(drivername="postgresql", database="postgres")
    try:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True, connect_timeout=5) as con:
            if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)).fetchone():
                return False
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
            return True
    except psycopg.Error as err:
        raise StoreError(f"--backend-store-uri: PostgreSQL at {redact(url)} cannot be used: "
                         f"{str(err).strip()[:300]}") from err


def command(backend: str, artifacts: Path, host: str, port: int, workers: int) -> list[str]:
    mlflow = shutil.which("mlflow", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if mlflow is None:
        raise StoreError("the mlflow command is not installed in this environment (make install)")
    return [mlflow, "server", "--backend-store-uri", backend, "--serve-artifacts",
            "--artifacts-destination", str(artifacts.resolve()), "--host", host, "--port", str(port),
            "--workers", str(workers)]


def serve(backend: str, artifacts: Path, host: str, port: int, workers: int) -> None:
    """Create the database if needed, then become the MLflow server (exec: signals reach it)."""
    created = ensure_database(backend)
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = command(backend, artifacts, host, port, workers)
    print(f"MLflow tracking server on http://{host}:{port}: runs in {redact(backend)}"
          f"{' (database created)' if created else ''}, artifacts in {artifacts.resolve()}\n"
          f"log to it with: MLFLOW_TRACKING_URI=http://{host}:{port} dvc repro", flush=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow's job runner (GenAI scorers and prompt jobs, none of which the pipeline uses) is
    # eight more Python processes importing MLflow: CPU taken from the machine whose energy is
    # measured. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true turns it back on.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(cmd[0], cmd)
