"""A second ``ferry up`` on ports already taken refuses to start and says why (no silent sharing)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

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
