"""Starts the peer servers from Ferry's benchmark (run by ``.venv``, the servers by ``.venv-mlserver``).

Each context manager starts one server on free loopback ports, waits until it answers, yields
where to reach it, and stops it, so peers never share the CPU with each other during a row.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks import PEER_PROCESS
from devstack.infra import free_port
from services.inference import openmp

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-mlserver"
MODEL = "efficientnet-lite0"
START_DEADLINE_S = 180.0
MLSERVER_MAX_BATCH_SIZE = 4
"""MLServer's adaptive batching: at most 4 images (this CPU's best batch, as Ferry picks it) ..."""
MLSERVER_MAX_BATCH_TIME_S = 0.005
"""... gathered for at most 5 ms (FACTS: the settings MLServer was measured with here)."""


@dataclass(frozen=True)
class Peer:
    """A running peer: its HTTP base URL and (MLServer) its gRPC target."""

    http_url: str
    grpc_target: str = ""
    pid: int = 0
    """The server's process (its workers are its children)."""


def missing() -> str:
    """Why the peers cannot run, or '' when ``.venv-mlserver`` is installed."""
    if (VENV / ".ferry-installed").exists():
        return ""
    return f"{VENV} is missing: run `make bench-peers` (it installs MLServer, FastAPI and torch there)"


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{url} did not answer (exit code {process.poll()}):\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.5)


@contextmanager
def _running(argv: list[str], cwd: Path, ready_url: str, env: dict[str, str]) -> Iterator[int]:
    log = cwd / "server.log"
    # The benchmark's process runs with Ferry's OpenMP settings; a peer starts with its defaults.
    inherited = {k: v for k, v in os.environ.items() if k not in openmp.VARIABLES}
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**inherited, **env, "PYTHONPATH": str(ROOT), PEER_PROCESS: "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(ready_url, process, log)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def mlserver(env: dict[str, str] | None = None, **extra_settings: object) -> Iterator[Peer]:
    """MLServer 1.7 with the custom runtime (benchmarks.peers.mlserver_runtime), adaptive batching on.

    Args:
        env: environment variables of the server (``OMP_NUM_THREADS=1``, say).
        extra_settings: more of MLServer's server settings (``parallel_workers=0``, say).
    """
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-mlserver-") as folder:
        root = Path(folder)
        settings = {
            "http_port": http_port,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
            "host": "127.0.0.1",
            **extra_settings,
        }
        (root / "settings.json").write_text(json.dumps(settings))
        model = {
            "name": MODEL,
            "implementation": "benchmarks.peers.mlserver_runtime.EfficientNetRuntime",
            "max_batch_size": MLSERVER_MAX_BATCH_SIZE,
            "max_batch_time": MLSERVER_MAX_BATCH_TIME_S,
        }
        (root / "model-settings.json").write_text(json.dumps(model))
        ready = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready"
        with _running([str(VENV / "bin/mlserver"), "start", str(root)], root, ready, env or {}) as pid:
            yield Peer(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", pid)


@contextmanager
def fastapi_endpoint() -> Iterator[Peer]:
    """The seed-style FastAPI endpoint (benchmarks.peers.fastapi_app) under uvicorn, one worker."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-fastapi-") as folder:
        argv = [
            str(VENV / "bin/uvicorn"), "benchmarks.peers.fastapi_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        with _running(argv, Path(folder), f"http://127.0.0.1:{port}/health", {}) as pid:
            yield Peer(f"http://127.0.0.1:{port}", pid=pid)
