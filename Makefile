# polydistill: `make run` runs the pipeline on the embedded default corpus, `make test` runs the tests.
# Both create .venv from the pinned lock on first use (Python 3.11 only needed).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
# One tracking database for every run, including `dvc exp run --temp` copies.
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
# dvc.yaml's stage commands call `python`: make it the project's.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test test-fast chaos clean bench bench-quick mlflow-server

setup: $(STAMP)

# pip brings uv and torch (pip's own configuration may point at a local CPU wheel), then uv installs the rest of the
# lock in parallel (the platform's certificate store, as pip's may hold a proxy's CA): under a minute where pip alone
# took over five. Where uv cannot reach the index that pip is configured for, pip installs the rest.
INSTALL_OPTIONS := --quiet --constraint requirements.lock --editable ".[test,bench,server]"
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint requirements.lock uv torch
	$(BIN)/uv pip install --python $(BIN)/python --system-certs --compile-bytecode $(INSTALL_OPTIONS) || \
		$(BIN)/python -m pip install $(INSTALL_OPTIONS)
	test -d .dvc || $(BIN)/dvc init --quiet
	touch $(STAMP)

# the pipeline flow runs `dvc repro`; its stage flows report to the flow's own Prefect API
run: setup
	$(BIN)/polydistill run

# Two pytest workers: much of the suite waits on subprocesses, servers and barriers, so on 2 cores the second worker
# fills those waits (pytest 21 -> 16 minutes from a fresh clone; 12 with the tests' shared pipeline build).
# TEST_WORKERS=0 runs the tests in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

test: setup
	$(BIN)/ruff check .
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow and not chaos"

# kill -9 of real stages on the real default corpus, then dvc repro -f (needs a finished `make run`; long)
chaos: setup
	$(BIN)/python -m pytest -m chaos tests/test_chaos.py

# MLflow on PostgreSQL (pgserver) at http://127.0.0.1:5050; then export MLFLOW_TRACKING_URI=http://127.0.0.1:5050
mlflow-server: setup
	$(BIN)/polydistill tracking start

clean:
	rm -rf $(VENV)

bench: setup
	$(BIN)/python -m bench

bench-quick: setup
	$(BIN)/python -m bench --quick
