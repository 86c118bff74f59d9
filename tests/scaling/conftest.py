"""A local NATS cluster of three nodes on loopback, as ``ferry up --nats-nodes 3`` runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scaling.cluster import LocalNatsCluster


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[LocalNatsCluster]:
    """Three nats-server processes routed to each other, JetStream replicating across them."""
    cluster = LocalNatsCluster(tmp_path, nodes=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
