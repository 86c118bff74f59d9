"""``<state_dir>/status.json``: what the supervisor of ``ferry up`` says about each process now.

The supervisor rewrites it about twice a second and removes it on a clean stop; ``ferry status``
and ``ferry restart`` read it. One module owns the format so writer and readers cannot drift.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from devstack.infra import pid_alive

STATUS_FILE = "status.json"
STALE_AFTER_S = 10.0
"""A file older than this means the supervisor stopped updating it (stuck or killed)."""

State = Literal["starting", "running", "restarting", "stopped"]
"""starting: launched, not serving yet; running: has served since launch; restarting: exited and
waiting out its backoff, or being replaced on request; stopped: stopped for good."""


@dataclass
class ProcessStatus:
    """One supervised process."""

    pid: int | None
    state: State
    restarts: int = 0
    """How often it was replaced in this run: after a crash or on request (``ferry restart``)."""
    serving: bool = False
    """gRPC health SERVING (services), /ready (Envoy), port open (NATS), process alive (Postgres)."""
    since: float = field(default_factory=time.time)
    """Unix time the current process started (starting, running) or exited (restarting, stopped)."""
    last_exit_code: int | None = None
    """Exit code of the previous process; negative: killed by that signal; None: unknown or none."""


@dataclass
class StackStatus:
    """The whole file."""

    updated: float
    supervisor_pid: int
    processes: dict[str, ProcessStatus]

    def supervisor_alive(self) -> bool:
        """Whether the ``ferry up`` that wrote this still runs."""
        return pid_alive(self.supervisor_pid)


def status_path(state_dir: Path) -> Path:
    """Where the status file of the stack in ``state_dir`` lives."""
    return state_dir / STATUS_FILE


def write_status(state_dir: Path, status: StackStatus) -> None:
    """Replaces the file atomically, so readers never see half of it."""
    path = status_path(state_dir)
    temporary = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(status), indent=2))
    temporary.replace(path)


def read_status(state_dir: Path) -> StackStatus | None:
    """The last status written, or None when there is none (no stack ran, or it stopped)."""
    try:
        raw = json.loads(status_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    processes = {name: ProcessStatus(**fields) for name, fields in raw["processes"].items()}
    return StackStatus(float(raw["updated"]), int(raw["supervisor_pid"]), processes)


def running_status(state_dir: Path) -> StackStatus | None:
    """The status, if a supervisor is running in ``state_dir``; None otherwise."""
    status = read_status(state_dir)
    return status if status is not None and status.supervisor_alive() else None


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def format_table(status: StackStatus, now: float | None = None) -> str:
    """The table ``ferry status`` prints: name, state, pid, restarts, serving, uptime."""
    now = time.time() if now is None else now
    rows = [("NAME", "STATE", "PID", "RESTARTS", "SERVING", "UPTIME")]
    for name, p in status.processes.items():
        up = p.state in ("starting", "running") and p.pid is not None
        rows.append(
            (
                name,
                p.state,
                str(p.pid) if p.pid is not None else "-",
                str(p.restarts),
                "yes" if p.serving else "no",
                _duration(now - p.since) if up else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def show(state_dir: Path) -> int:
    """``ferry status``: prints the table and returns 0, or says no stack runs and returns 1."""
    status = running_status(state_dir)
    if status is None:
        print(f"no Ferry stack is running in {state_dir} (start one with `ferry up`)")
        return 1
    print(f"Ferry supervisor pid {status.supervisor_pid}, state in {state_dir}")
    age = time.time() - status.updated
    if age > STALE_AFTER_S:
        print(f"warning: the supervisor last wrote this {age:.0f} s ago; it may be stuck")
    print(format_table(status))
    return 0
