"""Runs ``ferry up`` as a user would, in a temporary state folder with free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devstack.infra import free_port

FERRY = str(Path(sys.executable).parent / "ferry")


def _batch_size(env: dict[str, str]) -> dict[str, str]:
    """efficientnet-lite0 (in every test stack) at the batch size its warm-up timing chose on the
    2-core CI machine, given rather than timed: the timing took 4-5 s of each stack's start, as a
    fresh NATS keeps no earlier measurement. Not over a stack's own service-wide size (a model's
    own variable would win over it); mobilenet-v2 is still timed where it loads, and
    tests/inference tests the timing itself."""
    if "FERRY_INFERENCE_MAX_BATCH_SIZE" in env:
        return {}
    return {"FERRY_INFERENCE_MODEL_EFFICIENTNET_LITE0_MAX_BATCH_SIZE": "2"}


class RunningStack:
    """A ``ferry up`` process and the endpoints it wrote once ready."""

    def __init__(self, state_dir: Path, env: dict[str, str], args: Sequence[str] = ()) -> None:
        self.state_dir = state_dir
        self.args = list(args)
        """Extra arguments of ``ferry up`` (``--trace``)."""
        self.http_port = free_port()
        self.env = {
            **os.environ,
            # Test stacks start without the job lane (a second model process: memory and start
            # time); the tests of the lane turn it on (tests/e2e/test_job_lane.py).
            "FERRY_INFERENCE_JOB_LANE": "0",
            **_batch_size(env),
            **env,
            "FERRY_STATE_DIR": str(state_dir),
            "FERRY_HTTP_PORT": str(self.http_port),
            "FERRY_FREE_PORTS": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # export spans quickly so trace tests need not wait
        }
        self.log_path = state_dir.parent / f"{state_dir.name}-ferry-up.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoints: dict[str, Any] = {}

    def start(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Starts ``ferry up`` and waits for its endpoints file."""
        endpoints_file = self.state_dir / "endpoints.json"
        endpoints_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [FERRY, "up", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while not endpoints_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ferry up did not become ready:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.25)
        self.endpoints = json.loads(endpoints_file.read_text())
        return self.endpoints

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """Presses Ctrl-C (SIGINT) and waits for a clean exit; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
