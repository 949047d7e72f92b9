# The README's commands. Every target installs what it needs first (idempotent).
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install pipeline test test-fast test-browser lint compare ui server bench bench-compare

install:
	bash scripts/install.sh

## Install, then run the whole default pipeline (dvc repro).
pipeline: install
	dvc repro

## Install, lint (ruff), then run the whole suite: slow and browser tests included (CI runs this).
## The browser tests drive the system Chromium (install sets it up as root or with sudo) and fail without it.
test: install
	ruff check .
	python -m pytest -m "" -n 2 --dist loadscope

## Quick loop while developing: skips the slow and the browser tests (pyproject's default markers).
test-fast: install
	python -m pytest

## Only the linter (part of `make test`).
lint: install
	ruff check .

## Only the browser tests: headless Chromium renders the MLflow UI and the report offline.
test-browser: install
	python -m pytest -m browser

## Compare every model in the MLflow store (Pareto fronts, tables): reports/report.html and report.md.
compare: install
	python -m pipeline compare

## A shared MLflow tracking server on http://127.0.0.1:5000, PostgreSQL as its store (docs/scale-out.md);
## log to it with MLFLOW_TRACKING_URI=http://127.0.0.1:5000. Override: make server ARGS="--port 5001".
server: install
	python -m pipeline server $(ARGS)

## Browse the runs: MLflow UI on http://127.0.0.1:5000 (runs table: /#/experiments/1/runs?workflowType=machine_learning)
ui:
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

## Lightning+MLflow+CodeCarbon training path against a bare PyTorch loop.
bench: install
	python benchmarks/training_overhead.py

## `compare` over a temporary store of 1,000 runs (target: at most 10 s).
bench-compare: install
	python benchmarks/compare_runs.py
