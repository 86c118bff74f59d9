"""Real infrastructure for tests: one nats-server and one Postgres per test session, on free ports."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from devstack.infra import Postgres, free_port, start_nats
from tests import background
from tests.client_install import ClientBuild, build_client

# Keep CPU tests predictable on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# pgserver logs from an atexit hook, after pytest has closed the streams it captured.
logging.getLogger("pgserver").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real nats-server with JetStream, fresh for this test session."""
    root = tmp_path_factory.mktemp("nats")
    port = free_port()
    process = start_nats(port, root / "store", root / "logs")
    yield f"nats://127.0.0.1:{port}"
    process.stop()


@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a real PostgreSQL 16 server, fresh for this test session."""
    # Unix socket paths are limited to ~100 bytes, so keep the data dir short.
    root = Path(tmp_path_factory.mktemp("pg"))
    server = Postgres(root)
    yield server.uri
    server.stop()


@pytest.fixture(scope="session")
def client_build(tmp_path_factory: pytest.TempPathFactory) -> ClientBuild:
    """The client built and installed once per test session (tests/test_client_package.py and
    tests/e2e/test_installed_client.py). Defined here: a session fixture imported into two test
    modules is two fixtures, and the build (15-18 s) ran once for each."""
    return build_client(tmp_path_factory.mktemp("client-package"))


def pytest_configure(config: pytest.Config) -> None:
    """Installs a tracer provider that records every span, before any test or service runs.

    A service exports nothing in a test, so its own provider would record nothing; the global
    provider can be set only once, and ``setup_tracing`` keeps one a process already has. So every
    span of every in-process service is recorded, whatever test ran first, and a test reads the
    finished ones with the ``spans`` fixture.
    """
    trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_ON))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans finished during the test (the session's provider, installed by ``pytest_configure``)."""
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the provider outlives the test; stop collecting into this exporter


def pytest_collection_finish(session: pytest.Session) -> None:
    """Starts the slow checks of the checkout that selected tests assert on, at idle priority."""
    background.start([item.nodeid for item in session.items])


def pytest_unconfigure(config: pytest.Config) -> None:
    background.stop()
