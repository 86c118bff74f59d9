"""What the ``ferry`` command reads from the local stack's state folder (``FERRY_STATE_DIR``,
default ``.ferry``): its public endpoint and its dev API key.

Only files, never the server's code: ``ferry up`` writes ``endpoints.json`` once serving (and
removes it on a clean stop) and ``status.json`` with the supervisor's pid, so a file left by a
killed stack is not mistaken for a running one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_TARGET = "localhost:8080"


def state_dir() -> Path:
    """The local stack's state folder, as ``ferry up`` reads it."""
    return Path(os.environ.get("FERRY_STATE_DIR", ".ferry")).resolve()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def running_target(folder: Path | None = None) -> str:
    """The public gRPC endpoint of the stack running from ``folder``; empty when none runs.

    Running: the supervisor in ``status.json`` is alive; in the moment between ``endpoints.json``
    and the supervisor's first ``status.json``, a process the endpoints name is."""
    folder = folder or state_dir()
    endpoints = _read(folder / "endpoints.json")
    target = endpoints.get("grpc_target")
    if not isinstance(target, str):
        return ""
    status = _read(folder / "status.json")
    pids = endpoints.get("pids")
    started = list(pids.values()) if isinstance(pids, dict) else []
    alive = _alive(status["supervisor_pid"]) if "supervisor_pid" in status else any(map(_alive, started))
    return target if alive else ""


def default_target() -> tuple[str, str]:
    """The target and where it came from: ``FERRY_TARGET``, else the stack running from this
    checkout's state folder, else ``localhost:8080``."""
    if os.environ.get("FERRY_TARGET"):
        return os.environ["FERRY_TARGET"], "FERRY_TARGET"
    running = running_target()
    if running:
        return running, f"the stack running in {state_dir()}"
    return DEFAULT_TARGET, "no FERRY_TARGET, no running stack"


def dev_api_key() -> str:
    """The local stack's dev key (``<state_dir>/dev-api-key``); empty when there is none."""
    try:
        return (state_dir() / "dev-api-key").read_text().strip()
    except OSError:
        return ""
