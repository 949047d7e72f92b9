#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its test tools. Safe to run again.
#
# torch 2.13.0 is installed first and on its own: on this project's CPU machines pip takes the
# CPU build from local disk, while any other torch spec resolved first could pull a multi-GB
# CUDA build. GPU users: set TORCH_INDEX_URL to PyTorch's wheel index for their CUDA version
# (see README) before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# The browser tests (part of `make test`) drive the system Chromium through Playwright, which never
# downloads a browser here. Where there is none, install Debian's (about 120 MB to fetch, 500 MB on
# disk; ~20 s on a fast mirror) as root or through sudo; otherwise say how. It never stops the install:
# without a browser only the browser tests fail, with the same advice.
have_chromium() {
  if [ -n "${CHROMIUM:-}" ]; then command -v "$CHROMIUM" >/dev/null; return; fi
  local b
  for b in /usr/bin/chromium chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$b" >/dev/null && return 0
  done
  return 1
}
install_chromium() {
  local how="sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
  local sudo
  if [ "$(id -u)" = 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
    sudo="sudo"  # passwordless, or a terminal to ask the password on
  else
    echo "install: no Chromium, which the browser tests need, and no root or sudo to install it: run" >&2
    echo "install:   $how   (Debian/Ubuntu), or set CHROMIUM to a Chromium/Chrome binary" >&2
    return 0
  fi
  if ! command -v apt-get >/dev/null; then
    echo "install: no Chromium, which the browser tests need, and no apt-get: install Chromium with your" >&2
    echo "install: package manager, or set CHROMIUM to a Chromium/Chrome binary" >&2
    return 0
  fi
  echo "install: Chromium for the browser tests (apt-get install chromium chromium-driver)"
  if ! { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }; then
    echo "install: apt-get could not install Chromium; the browser tests will fail until you run: $how" >&2
  fi
}
have_chromium || install_chromium

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Nothing to do when this exact pyproject.toml and script were installed already.
stamp=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ "$(cat .venv/.installed 2>/dev/null)" = "$stamp" ] && .venv/bin/python -c "import pipeline" 2>/dev/null; then
  echo "installed: .venv is up to date"
  exit 0
fi
# pip here warns about local wheel folders that do not exist on every machine: drop that noise only.
pip_quiet() { .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_quiet install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
  else
    pip_quiet install -q "torch==2.13.0"
  fi
fi
# The rest through uv, which resolves, downloads and installs in parallel: `time bash
# scripts/install.sh` from nothing (Chromium present) read 1 min 38 s on a 2-core machine; with pip,
# the install part of a CI run took about 2 min 47 s (733 s in all, less its 566 s suite).
# torch is installed already, so uv keeps that build (it satisfies torch==2.13.0).
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would
# otherwise compile MLflow, Lightning and the rest again at each import.
pip_quiet install -q "uv==0.13.9"
uv_quiet() { .venv/bin/uv pip "$@" --python .venv/bin/python --compile-bytecode -q; }
uv_quiet install -e ".[dev]"
# energy.backend: zeus. Without its amdsmi requirement (see pyproject.toml, extra "gpu"); AMD GPU users
# add the amdsmi that matches their ROCm.
uv_quiet install --no-deps "zeus==0.16.0"
.venv/bin/python - <<'PY'
import codecarbon, dvc.version, lightning, mlflow, optuna, torch
print(f"installed: torch {torch.__version__} | lightning {lightning.__version__} | mlflow {mlflow.__version__} "
      f"| optuna {optuna.__version__} | codecarbon {codecarbon.__version__} | dvc {dvc.version.__version__}")
PY
echo "$stamp" > .venv/.installed
