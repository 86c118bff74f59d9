# The README's commands. `make up` installs everything and starts the local stack;
# `make test` installs everything and runs the whole suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ferry-installed

.PHONY: install up test faults protos lint bench bench-inference clean-state

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: install
	$(VENV)/bin/ferry up

test: install
	$(PY) -m pytest

# The fault matrix alone (it is part of `make test` too), printing its table of figures.
faults: install
	$(PY) -m pytest tests/faults -s

protos: install
	$(PY) -m tools.protogen

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/buf lint
	$(VENV)/bin/mypy services devstack clients tools

bench: install
	$(PY) -m benchmarks.e2e

bench-inference: install
	$(PY) -m benchmarks.inference

clean-state:
	rm -rf .ferry
