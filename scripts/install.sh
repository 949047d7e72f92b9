#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its test tools.
# torch 2.13.0 is installed first and on its own: on the project's machines pip takes the
# CPU build from local disk; any other torch spec resolved first could pull a multi-GB CUDA build.
# GPU users: set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128) before running.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPIP=".venv/bin/python -m pip"
$VPIP install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    $VPIP install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
  else
    $VPIP install -q "torch==2.13.0"
  fi
fi
$VPIP install -q -e ".[dev]"
echo "installed: $(.venv/bin/python -c 'import torch, lightning, mlflow, optuna, codecarbon, dvc.version as v; print("torch", torch.__version__, "| lightning", lightning.__version__, "| mlflow", mlflow.__version__, "| optuna", optuna.__version__, "| codecarbon", codecarbon.__version__, "| dvc", v.__version__)')"
