# The README's commands. `make up` installs everything and starts the local stack;
# `make test` installs everything and runs the whole suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ferry-installed

.PHONY: install deploy-tools up test faults protos lint bench bench-inference clean-state

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# promtool (Debian's `prometheus` package) checks deploy/prometheus/ in the suite. Installed only
# when missing and we are root with apt-get; otherwise those tests skip and say why.
deploy-tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing promtool (apt-get install prometheus)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	      || echo "could not install promtool: its tests will be skipped"; \
	  else echo "promtool missing and not root: its tests will be skipped"; fi; }

up: install
	$(VENV)/bin/ferry up

test: install deploy-tools
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
