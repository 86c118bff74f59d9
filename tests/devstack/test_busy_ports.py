"""A second ``ferry up`` on ports already taken refuses to start and says why (no silent sharing)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

import devstack.stack
from devstack.settings import StackSettings
from devstack.stack import LocalStack
from tests.e2e.stack import FERRY


def test_ferry_up_refuses_a_public_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "FERRY_STATE_DIR": str(tmp_path / "state"),
            "FERRY_FREE_PORTS": "true",
            "FERRY_HTTP_PORT": str(port),
        }
        done = subprocess.run([FERRY, "up"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"ports already in use on 127.0.0.1: http {port}" in done.stderr
    assert "another `ferry up`" in done.stderr
    assert not (tmp_path / "state" / "endpoints.json").exists()


def test_free_ports_skip_the_public_port_and_every_port_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The public port is bound only when Envoy starts, so the OS may offer it again meanwhile; a
    # metrics server given it would share it (SO_REUSEPORT) and answer some of Envoy's requests.
    stack = LocalStack(StackSettings(state_dir=tmp_path, free_ports=True, http_port=18123))
    offered = iter([18123, 20001, 20001, 18123, 20002])  # what the OS offers, one bind at a time
    monkeypatch.setattr(devstack.stack, "free_port", lambda host: next(offered))
    assert [stack._port(50051), stack._port(9101)] == [20001, 20002]
