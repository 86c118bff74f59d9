"""Starts the real infrastructure binaries that ship as Python packages (nats-server, Postgres).

Used by ``ferry up`` and by the test suite, so tests run against exactly what users run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pgserver.postgres_server import get_server


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def venv_binary(name: str) -> str:
    """Finds a binary installed by a package into this interpreter's environment (or on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed; run `make install` first")
    return found


def wait_for_port(host: str, port: int, timeout_s: float, process: ManagedProcess | None = None) -> None:
    """Waits until ``host:port`` accepts TCP connections.

    Raises:
        TimeoutError: nothing listened in time.
        RuntimeError: ``process`` exited while we waited.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited early; log tail:\n{process.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s:.0f}s")


@dataclass
class ManagedProcess:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @classmethod
    def start(
        cls, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """Starts ``argv`` with its output appended to ``log_dir/<name>.log``."""
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
        )
        return cls(name, popen, log_path, log_file)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int:
        """Sends SIGTERM, waits, then SIGKILLs; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()
        return self.popen.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the process's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


NATS_MAX_PAYLOAD = 8 * 1024 * 1024


def start_nats(port: int, store_dir: Path, log_dir: Path, host: str = "127.0.0.1") -> ManagedProcess:
    """Starts nats-server with JetStream on ``host:port``, storing streams in ``store_dir``."""
    store_dir.mkdir(parents=True, exist_ok=True)
    config = store_dir / "nats.conf"
    # Images travel inside job items, so the 1 MiB default payload limit is raised on purpose.
    config.write_text(
        f'listen: "{host}:{port}"\n'
        f"max_payload: {NATS_MAX_PAYLOAD}\n"
        f'jetstream {{\n  store_dir: "{store_dir}"\n}}\n'
    )
    process = ManagedProcess.start("nats", [venv_binary("nats-server"), "-c", str(config)], log_dir)
    wait_for_port(host, port, timeout_s=20, process=process)
    return process


class Postgres:
    """A real PostgreSQL 16 (from the pgserver package) with its data in ``data_dir``.

    The server listens on a unix socket inside ``data_dir`` only, never on a TCP port.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._server = get_server(data_dir, cleanup_mode="stop")

    @property
    def uri(self) -> str:
        """A libpq/asyncpg connection URI."""
        return str(self._server.get_uri())

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        pid = self._server.get_pid()
        if pid is None:
            raise RuntimeError("postgres is not running")
        return int(pid)

    def stop(self) -> None:
        """Stops the server; its data stays for the next start."""
        self._server.cleanup()
