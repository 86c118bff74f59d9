"""Readiness probes the supervisor waits on: gRPC health and Envoy's /ready."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from devstack.infra import ManagedProcess
from services.common.probe import is_serving


def _wait(check: Callable[[], bool], what: str, process: ManagedProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited while starting; log tail:\n{process.log_tail()}")
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready within {timeout_s:.0f}s; log tail:\n{process.log_tail()}")


def wait_grpc_serving(target: str, process: ManagedProcess, timeout_s: float) -> None:
    """Waits until ``target`` answers gRPC health SERVING (the overall "" service)."""
    _wait(lambda: is_serving(target, timeout_s=1.0), process.name, process, timeout_s)


def wait_envoy_ready(admin_url: str, process: ManagedProcess, timeout_s: float) -> None:
    """Waits until Envoy's admin /ready says LIVE."""
    _wait(lambda: envoy_ready(admin_url), "envoy", process, timeout_s)


def envoy_ready(admin_url: str, timeout_s: float = 1.0) -> bool:
    """Whether Envoy's admin /ready answers 200 (LIVE) now."""
    try:
        with urllib.request.urlopen(f"{admin_url}/ready", timeout=timeout_s) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False
