"""Asking a running ``ferry up`` to do something: files in ``<state_dir>/control/``.

A request is a file ``<action>-<name>-<nonce>`` the supervisor picks up (and deletes), the action
one of ``restart`` (a rolling replacement), ``stop`` (stop it and keep it stopped: an operator's
hold, for maintenance or to rehearse an outage) and ``start`` (end the hold); its answer is
``result-<nonce>.json``. Files, not a socket, because the state folder is already where the CLI
finds the stack, and a file survives the CLI giving up (a late answer is just never read).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from devstack.status import running_status

CONTROL_DIR = "control"
ACTIONS = ("restart", "stop", "start")
RESTART_TIMEOUT_S = 180.0
"""How long ``ferry restart`` (and ``ferry start``) waits for each process to be serving."""


@dataclass
class RestartResult:
    """The supervisor's answer to one request."""

    name: str
    ok: bool
    old_pid: int | None = None
    new_pid: int | None = None
    message: str = ""


def control_dir(state_dir: Path) -> Path:
    """The folder requests and answers pass through."""
    return state_dir / CONTROL_DIR


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def request(state_dir: Path, action: str, name: str) -> str:
    """Files a request to ``action`` process ``name``; returns its nonce (names the answer)."""
    nonce = secrets.token_hex(6)
    folder = control_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / f"{action}-{name}-{nonce}", f"{time.time()}\n")
    return nonce


def take_requests(state_dir: Path) -> list[tuple[str, str, str]]:
    """Removes and returns the pending requests as (action, name, nonce), oldest first."""
    folder = control_dir(state_dir)
    if not folder.is_dir():
        return []
    taken = []
    paths = [p for p in folder.iterdir() if p.name.partition("-")[0] in ACTIONS]
    for path in sorted(paths, key=lambda p: p.stat().st_mtime):
        action, _, rest = path.name.partition("-")
        name, _, nonce = rest.rpartition("-")
        path.unlink(missing_ok=True)
        taken.append((action, name, nonce))
    return taken


def write_result(state_dir: Path, nonce: str, result: RestartResult) -> None:
    """Answers request ``nonce``."""
    _write_atomically(control_dir(state_dir) / f"result-{nonce}.json", json.dumps(asdict(result)))


def wait_result(state_dir: Path, action: str, name: str, nonce: str, timeout_s: float) -> RestartResult:
    """Waits for the answer to request ``nonce``, and removes it; a failed result if none came."""
    answer = control_dir(state_dir) / f"result-{nonce}.json"
    deadline = time.monotonic() + timeout_s
    while not answer.exists():
        if running_status(state_dir) is None:
            return RestartResult(name, ok=False, message="the supervisor (ferry up) stopped")
        if time.monotonic() > deadline:
            (control_dir(state_dir) / f"{action}-{name}-{nonce}").unlink(missing_ok=True)
            return RestartResult(name, ok=False, message=f"no answer within {timeout_s:.0f} s")
        time.sleep(0.2)
    result = RestartResult(**json.loads(answer.read_text()))
    answer.unlink(missing_ok=True)
    return result


def clear(state_dir: Path) -> None:
    """Drops requests and answers left by an earlier run (the supervisor calls it on start)."""
    folder = control_dir(state_dir)
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)


def rolling_restart(state_dir: Path, names: list[str], timeout_s: float = RESTART_TIMEOUT_S) -> int:
    """``ferry restart``: replaces each process in turn, waiting until it serves; returns the exit code."""
    return act(state_dir, "restart", names, timeout_s)


def act(state_dir: Path, action: str, names: list[str], timeout_s: float = RESTART_TIMEOUT_S) -> int:
    """``ferry restart|stop|start NAME...``: one process at a time; returns the exit code."""
    status = running_status(state_dir)
    if status is None:
        print(f"no Ferry stack is running in {state_dir} (start one with `ferry up`)")
        return 1
    expanded = expand_groups(names, list(status.processes))
    unknown = [name for name in expanded if name not in status.processes]
    if unknown:
        print(f"unknown process {', '.join(unknown)}; choose from {', '.join(status.processes)}")
        return 2
    for name in expanded:
        pid = status.processes[name].pid
        print(f"{action} {name}{f' (pid {pid})' if pid else ''} ...", flush=True)
        result = wait_result(state_dir, action, name, request(state_dir, action, name), timeout_s)
        if not result.ok:
            print(f"{name}: {action} failed: {result.message}")
            return 1
        print(f"{name}: {outcome(result)}", flush=True)
    return 0


def expand_groups(names: list[str], processes: list[str]) -> list[str]:
    """Names each process meant: ``gateway`` on a stack of ``gateway-0`` and ``gateway-1`` means both.

    A scaled stack (``FERRY_GATEWAYS=2`` ...) names its processes ``SERVICE-N``; the README's
    ``ferry restart gateway inference`` must keep working there, one process at a time.
    """
    expanded: list[str] = []
    for name in names:
        members = [p for p in processes if p.rpartition("-")[0] == name and p.rpartition("-")[2].isdigit()]
        expanded.extend(members if name not in processes and members else [name])
    return expanded


def outcome(result: RestartResult) -> str:
    """What a successful restart, stop or start did, naming only the pids there are."""
    if result.message:
        return result.message
    if result.old_pid is None:
        return f"started, pid {result.new_pid}, serving"
    if result.new_pid is None:
        return f"stopped (was pid {result.old_pid})"
    return f"pid {result.old_pid} -> {result.new_pid}, serving"
