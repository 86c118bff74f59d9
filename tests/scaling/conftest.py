"""The scale-out matrix's fixtures: a loopback NATS cluster, and a whole stack of several processes each.

The scaled stack is what ``FERRY_NATS_NODES=3 FERRY_GATEWAYS=3 FERRY_RUNNERS=2 FERRY_JOB_QUEUES=2
FERRY_STORES=2 FERRY_INFERENCE_INSTANCES=3 FERRY_INFERENCE_MODELS=efficientnet-lite0 ferry up`` runs:
one Postgres, a 3-node NATS cluster with every stream replicated 3 ways, and two or three of every
service (the third gateway stopped until case 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import RunningStack
from tests.faults.conftest import photos  # noqa: F401  (the same photos as the fault matrix)
from tests.faults.harness import FaultStack, Report
from tests.scaling.cluster import LocalNatsCluster

API_KEY = "ferry-scaling-key-0123456789"
SCALE = {
    "FERRY_NATS_NODES": "3",
    "FERRY_GATEWAYS": "3",  # gateway-2 is held back until case 4 adds it
    "FERRY_RUNNERS": "2",
    "FERRY_JOB_QUEUES": "2",  # the job queue's API, apart from the runners
    "FERRY_STORES": "2",
    "FERRY_INFERENCE_INSTANCES": "3",
    # The one model the matrix calls: each replica loading all five (and timing batch sizes for
    # the image models) took 20-25 s more of the stack's start (71-74 s -> 47-51 s at load 9-11).
    "FERRY_INFERENCE_MODELS": "efficientnet-lite0",
}


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[LocalNatsCluster]:
    """Three nats-server processes routed to each other, JetStream replicating across them."""
    cluster = LocalNatsCluster(tmp_path, nodes=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def scaling_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    """The matrix's figures: printed at the end, kept as JSON for docs/scaling.md."""
    path = Path(tmp_path_factory.mktemp("scaling")) / "scaling.json"
    collected = Report(path)
    yield collected
    if collected.rows:
        print(f"\n\nScale-out matrix (figures also in {path}):\n{collected.table()}")


@pytest.fixture(scope="package")
def scaled_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A whole ``ferry up`` stack of several processes per part, under the supervisor."""
    root = Path(tmp_path_factory.mktemp("scaledstack"))
    failpoints = root / "failpoints"
    failpoints.mkdir()
    running = RunningStack(
        root / "state",
        {"FERRY_DEV_API_KEY": API_KEY, "FERRY_FAILPOINTS_DIR": str(failpoints), **SCALE},
    )
    endpoints = running.start()
    stack = FaultStack(endpoints, running.state_dir, running.env, API_KEY, failpoints)
    try:
        stack.wait_all_serving()
        stack.ferry("stop", "gateway-2")
        yield stack
    finally:
        code = running.stop()
        assert code == 0, f"ferry up exited {code}:\n{running.log()[-4000:]}"
