# The README's commands. Every target installs what it needs first (idempotent).
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install pipeline test test-fast test-browser compare ui bench bench-compare

install:
	bash scripts/install.sh

## Install, then run the whole default pipeline (dvc repro).
pipeline: install
	dvc repro

## Install, then run every test except the opt-in browser ones (CI runs this).
test: install
	python -m pytest -m "not browser"

## Quick loop while developing: skips the slow end-to-end tests.
test-fast: install
	python -m pytest

## Opt-in: headless Chromium renders the MLflow UI and the report offline (needs: apt-get install chromium).
test-browser: install
	python -m pytest -m browser

## Compare every model in the MLflow store (Pareto fronts, tables): reports/report.html and report.md.
compare: install
	python -m pipeline compare

## Browse the runs: MLflow UI on http://127.0.0.1:5000 (runs table: /#/experiments/1/runs?workflowType=machine_learning)
ui:
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

## Lightning+MLflow+CodeCarbon training path against a bare PyTorch loop.
bench: install
	python benchmarks/training_overhead.py

## `compare` over a temporary store of 1,000 runs (target: at most 10 s).
bench-compare: install
	python benchmarks/compare_runs.py
