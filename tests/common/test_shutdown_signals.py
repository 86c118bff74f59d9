"""How a service stops (``services.common.runtime``), in a real child process: SIGTERM leaves its
balancers first (``SHUTDOWN_DELAY_S``); SIGINT, sent once its callers have stopped, drains at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.infra import free_port
from services.common.probe import is_serving

ROOT = Path(__file__).resolve().parents[2]
DELAY_S = 60  # far longer than any wait below: a stop that waited it would fail the test


class Child:
    """``python -m tests.devstack.children service``: an empty Ferry service with a shutdown delay."""

    def __init__(self, tmp_path: Path) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.log = tmp_path / "child.log"
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FERRY_GRPC_PORT": self.target.rsplit(":", 1)[1],
            "FERRY_METRICS_PORT": "0",
            "FERRY_SHUTDOWN_DELAY_S": str(DELAY_S),
        }
        argv = [sys.executable, "-m", "tests.devstack.children", "service", str(barrier), "1"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def health(self) -> int:
        """The health service's answer (an error while it does not listen)."""
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)  # type: ignore[attr-defined]
        return int(answer.status)

    def wait_logged(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.log.read_text()}"
            time.sleep(0.1)

    def exit_code(self) -> int:
        """Its exit code, once it has stopped without waiting out the delay."""
        try:
            return self.process.wait(DELAY_S / 3)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {DELAY_S / 3:.0f} s after the signal:\n{self.log.read_text()}")


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    running = Child(tmp_path)
    try:
        running.wait_logged("started:")
        assert is_serving(running.target)
        yield running
    finally:
        running.process.kill()
        running.process.wait()


def test_sigint_drains_at_once_without_the_shutdown_delay(child: Child) -> None:
    child.process.send_signal(signal.SIGINT)
    assert child.exit_code() == 0
    log = child.log.read_text()
    assert "leaving: NOT_SERVING" not in log
    assert "shutting down: draining" in log and "stopped" in log


def test_sigterm_answers_not_serving_for_the_delay_and_a_sigint_then_ends_it(child: Child) -> None:
    child.process.send_signal(signal.SIGTERM)
    child.wait_logged(f"leaving: NOT_SERVING, still answering for {DELAY_S:.1f}s")
    # Still answering, as balancers need while they move away: it says NOT_SERVING, not refused.
    assert child.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert child.process.poll() is None

    child.process.send_signal(signal.SIGINT)  # everything that called it has stopped meanwhile
    assert child.exit_code() == 0
    assert "stopped" in child.log.read_text()
