# Two commands for a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install the project (with its dev extra) on first use.
# Tests come in two tiers: `make test` (unit and component tests, in-process servers, < 3 min) and
# `make test-system` (the real-process suites: pytest marker `system`); `make test-all` runs both.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-system test-all lint typecheck check bench bench-iforest bench-detectors clean proto audit loadtest loadtest-quick bench-all faults

$(BIN)/sentinel: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/sentinel
	$(BIN)/sentinel demo

# The fast tier runs on two worker processes (pytest-xdist); the real-process tier one test at a time.
test: $(BIN)/sentinel
	$(BIN)/pytest -q -m "not system" -n 2

test-system: $(BIN)/sentinel
	$(BIN)/pytest -q -m system

test-all: test test-system

lint: $(BIN)/sentinel
	$(BIN)/ruff check .

typecheck: $(BIN)/sentinel
	$(BIN)/mypy

check: lint typecheck test-all

bench: $(BIN)/sentinel
	$(BIN)/python -m loadtest.bench_sidecar

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache

bench-iforest: $(BIN)/sentinel
	$(BIN)/python -m loadtest.bench_iforest

bench-detectors: $(BIN)/sentinel
	$(BIN)/python -m loadtest.detector_quality

proto: $(BIN)/sentinel
	PYTHON=$(BIN)/python scripts/gen_proto.sh

audit: $(BIN)/sentinel
	PYTHON=$(BIN)/python scripts/audit.sh

loadtest: $(BIN)/sentinel
	$(BIN)/python -m loadtest.suite --jobs 3 --out loadtest/reports

loadtest-quick: $(BIN)/sentinel
	$(BIN)/python -m loadtest.suite --quick --out loadtest/reports/quick

bench-all: $(BIN)/sentinel
	$(BIN)/python -m loadtest.bench_all

faults: $(BIN)/sentinel
	$(BIN)/pytest -q tests/faults
