"""nats-server runs with the Go memory limit the stack's settings give it (``FERRY_NATS_MEMORY_LIMIT``),
the same value docker-compose.yml gives its NATS."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pydantic
import pytest
import yaml

from devstack.infra import ManagedProcess, free_port, nats_command, nats_environment, wait_for_port
from devstack.settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]


def test_nats_runs_with_the_memory_limit_it_is_given(tmp_path: Path) -> None:
    """Go reads GOMEMLIMIT from the environment: /varz says what the server's runtime took."""
    port, monitor = free_port(), free_port()
    argv = [*nats_command(port, tmp_path / "store"), "-m", str(monitor)]
    process = ManagedProcess.start("nats", argv, tmp_path / "logs", nats_environment("64MiB"))
    try:
        wait_for_port("127.0.0.1", monitor, timeout_s=20, process=process)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=2) as answer:
                    varz = json.loads(answer.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        process.stop()
    assert varz["gomemlimit"] == 64 * 2**20


def test_compose_gives_nats_the_limit_ferry_up_does() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    default = StackSettings.model_fields["nats_memory_limit"].default
    assert compose["services"]["nats"]["environment"]["GOMEMLIMIT"] == default


@pytest.mark.parametrize("value", ["256MB", "1.5GiB", "-1", ""])
def test_a_limit_go_would_not_read_is_refused_at_start(value: str) -> None:
    # Go reads 256MiB, 1GiB, 268435456 or off; a unit it does not know would stop nats-server.
    with pytest.raises(pydantic.ValidationError):
        StackSettings(nats_memory_limit=value)
