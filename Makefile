# Two commands do all the set-up: `make demo` and `make test`. Each installs what is missing (Debian packages
# mosquitto and influxdb, a virtual environment in .venv with the project and its dev extras); a second run installs
# nothing. `make test-fast` runs the tests that need no live service, with only the virtual environment.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.energyhub-installed
STATE_DIR ?= var
PYTEST_ARGS ?=
DEMO_ARGS ?=

HIL_COMMUNITY ?= examples/de-koumen-2026.yaml
HIL_SPEED ?= 60

.PHONY: demo hil test test-fast setup system-deps lint format clean

demo: setup
	$(BIN)/energyhub demo --state-dir $(STATE_DIR) $(DEMO_ARGS)

# The whole estate in the loop: every company of the community file, each gateway's agent, one data clock.
hil: setup
	$(BIN)/energyhub demo --all --community $(HIL_COMMUNITY) --speed $(HIL_SPEED) --state-dir $(STATE_DIR)

# Every test, against a real Mosquitto, a real influxd, real Modbus servers and Chromium.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests not marked live (tests/conftest.py): no Mosquitto, no influxd, no servers; only the virtual environment.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not live" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

setup: system-deps $(STAMP)

system-deps:
	@scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "energyhub needs Python 3.11 or newer; found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	@touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
