"""`ferry up` as a user runs it: Ctrl-C stops every process, and a second start keeps the data."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devstack.status import read_status
from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY, RunningStack

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but was not reaped yet is a zombie: not running.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_ctrl_c_stops_everything_and_restart_keeps_state(tmp_path: Path, coffee_jpeg: bytes) -> None:
    state = tmp_path / "state"
    first = RunningStack(state, {"FERRY_DEV_API_KEY": ""})  # the stack generates and keeps a key
    endpoints = first.start()
    try:
        status = read_status(state)
        assert status is not None
        assert list(status.processes) == [
            "postgres",
            "nats",
            "store",
            "inference",
            "jobs-queue",  # the job queue's API, apart from the runner (FERRY_JOB_QUEUES=1)
            "jobs",
            "gateway",
            "gateway-uploads",  # the upload lane (FERRY_UPLOAD_GATEWAYS=1)
            "envoy",
        ]
        assert {name: p.pid for name, p in status.processes.items()} == endpoints["pids"]
        rest = Rest(endpoints["http_url"], endpoints["dev_api_key"])
        status, made = rest.post(
            "/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(coffee_jpeg)}}
        )
        assert status == 200, made
        name = made["prediction"]["name"]
        assert rest.poll(f"/v1/{name}", lambda s, _: s == 200)[0] == 200
    finally:
        exit_code = first.stop()
    assert exit_code == 0, first.log()[-3000:]
    assert {n for n, pid in endpoints["pids"].items() if _alive(pid)} == set()
    assert not (state / "status.json").exists()
    shown = subprocess.run([FERRY, "status"], env=first.env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 1
    assert "no Ferry stack is running" in shown.stdout

    second = RunningStack(state, {"FERRY_DEV_API_KEY": ""})
    again = second.start()
    try:
        assert again["dev_api_key"] == endpoints["dev_api_key"]
        status, body = Rest(again["http_url"], again["dev_api_key"]).get(f"/v1/{name}")
        assert status == 200, body
        assert body["prediction"]["name"] == name
    finally:
        assert second.stop() == 0
