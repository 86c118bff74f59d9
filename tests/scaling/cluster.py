"""A NATS cluster of real nats-server processes on loopback, whose nodes a test can kill and restart."""

from __future__ import annotations

import signal
from pathlib import Path

from devstack.infra import ManagedProcess, NatsCluster, free_port, start_nats


class LocalNatsCluster:
    """``nodes`` nats-servers, each with its own client port, route port and JetStream directory."""

    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root = root
        self.ports = [free_port() for _ in range(nodes)]
        self.cluster = NatsCluster("ferry", tuple(free_port() for _ in range(nodes)))
        self.processes: list[ManagedProcess | None] = [None] * nodes

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated, as ``FERRY_*_NATS_URL`` takes a cluster."""
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        """Starts every node that is not running."""
        for node in range(len(self.ports)):
            if self.processes[node] is None:
                self.start_node(node)

    def start_node(self, node: int) -> None:
        """Starts node ``node`` again on its own ports and directory (its streams catch up)."""
        self.processes[node] = start_nats(
            self.ports[node], self.root / f"nats-{node}", self.root / "logs", cluster=self.cluster, node=node
        )

    def kill_node(self, node: int) -> None:
        """kill -9: the node gets no chance to hand over leadership or flush anything."""
        process = self.processes[node]
        assert process is not None, f"node {node} is not running"
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait()
        process.log_file.close()
        self.processes[node] = None

    def stop(self) -> None:
        """Stops every node still running."""
        for node, process in enumerate(self.processes):
            if process is not None:
                process.stop()
                self.processes[node] = None
