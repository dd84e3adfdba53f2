# Set-up, demo and tests. Every target creates .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: setup setup-services demo medium cluster-demo test test-slow lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 found (set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,ray,postgres]"
	touch $(STAMP)

# PostgreSQL, for the tests that use it as MLflow's store (they are skipped without it, and
# fail without it under HARNESS_REQUIRE_SERVICES=1, as in CI). Debian/Ubuntu: apt-get, as
# root or through sudo. Nothing is started here: each test run starts its own server on
# 127.0.0.1 in a temporary folder.
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
setup-services:
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null; then \
		echo "PostgreSQL is installed"; \
	else \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql; \
	fi

# The main job: the quick grid (dot vs scaled_dot at a small and a large d_k, tuned, 8 seeds)
# recorded in ./mlflow.db, then its HTML and PDF report in reports/quick/ (paths printed).
demo: setup
	$(BIN)/harness run grids/quick.yaml
	$(BIN)/harness report quick

# The tuned comparison of grids/medium.yaml (4 kinds x 4 optimizers x 3 tasks, successive
# halving, 3 final seeds; about an hour on 2 cores), then its report in reports/medium/.
medium: setup
	$(BIN)/harness run grids/medium.yaml
	$(BIN)/harness report medium

# grids/cluster_demo.yaml on a two-node Ray cluster started on this machine (a head and a
# worker node, one CPU each, every port on 127.0.0.1) logging to an MLflow tracking server
# (SQLite in a temporary folder), then `harness status` with the cells each node trained.
# Everything it starts is stopped when it ends, however it ends (it never runs `ray stop`).
cluster-demo: setup
	$(BIN)/python scripts/cluster_demo.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Fast suite (slow accuracy-target runs excluded), lint and format check first.
test: lint
	$(BIN)/pytest -q

# The long real training runs behind the accuracy targets (CI runs them too).
test-slow: setup
	$(BIN)/pytest -q -m slow

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) mlflow.db mlruns .pytest_cache .ruff_cache
