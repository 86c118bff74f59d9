"""Real infrastructure for tests: one nats-server and one Postgres per test session, on free ports."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.infra import Postgres, free_port, start_nats

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
