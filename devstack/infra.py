"""Starts the real infrastructure binaries that ship as Python packages (nats-server, Postgres).

Used by ``ferry up`` and by the test suite, so tests run against exactly what users run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.common import cpu_idle, time_slice
from services.common.cpu_idle import CpuIdle


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
        raise FileNotFoundError(
            f"{name} is not installed: the local stack needs the `stack` extra "
            "(`make install`, or `pip install -e '.[stack]'`)"
        )
    return found


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user (pgserver runs Postgres as its own user under root)
    stat = Path(f"/proc/{pid}/stat")
    try:
        # The state letter follows the parenthesised command name, which may itself hold spaces.
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Waits until no process ``pid`` exists, not even a zombie; returns whether it went in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.05)
    return False


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether ``host:port`` accepts a TCP connection now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


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
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s:.0f}s")


def lower_priority(pid: int, niceness: int) -> None:
    """Lowers ``pid``'s CPU priority by ``niceness`` against every other process, not only those of
    its session (as ``nice -n`` would).

    Each child leads a session of its own (``start_new_session``), and with the kernel's autogroups
    on (Linux's default on desktops and many servers) a session is one scheduling group whose
    processes' nice values only rank them among themselves: a process at nice 10 still got its
    group's full share beside the other processes' groups. The group's own nice is what ranks it
    against them (``/proc/<pid>/autogroup``; raising it needs no privilege). Both are set, so it
    holds with autogroups on or off."""
    os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, pid) + niceness))
    with contextlib.suppress(OSError):  # no autogroups here: the process's nice is what counts
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))


def raise_priority(pid: int, niceness: int) -> bool:
    """Puts ``pid``'s CPU ahead of other processes' by ``niceness``: its session's autogroup nice
    and its own at ``-niceness`` (see ``lower_priority``). Needs CAP_SYS_NICE (root); returns
    whether it held (False: the process keeps nice 0, and the caller says so)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, -niceness)
    except PermissionError:
        return False
    with contextlib.suppress(OSError):  # no autogroups here: the process's nice is what counts
        Path(f"/proc/{pid}/autogroup").write_text(str(-niceness))
    return True


@dataclass
class ManagedProcess:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    log_offset: int = 0
    """Size of the log file when this process started: where its own output begins."""

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        niceness: int = 0,
        idle_group: CpuIdle = "off",
        slice_us: int = 0,
    ) -> ManagedProcess:
        """Starts ``argv`` with its output appended to ``log_dir/<name>.log``; ``niceness`` > 0: its
        CPU comes after the other processes' (``lower_priority``), < 0: before them where this
        process may say so (``raise_priority``; a warning where it may not); ``idle_group`` ``auto``: the
        whole process runs in the machine's ``cpu.idle`` cgroup where it can
        (``services.common.cpu_idle``: below every other group, where a nice only weighs less);
        ``slice_us``: its threads' scheduler time slice (``services.common.time_slice``; 0: the
        kernel's), set before it starts them, so every thread inherits it."""
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        log_offset = log_file.tell()
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
        )
        if niceness > 0:
            lower_priority(popen.pid, niceness)
        elif niceness < 0 and not raise_priority(popen.pid, -niceness):
            print(f"{name}: at nice 0, not {niceness}: a higher priority needs CAP_SYS_NICE", file=sys.stderr)
        cpu_idle.join_process(popen.pid, idle_group)  # before it starts a thread: all start there
        if slice_us and not time_slice.shorten_process(popen.pid, slice_us):
            print(f"{name}: the kernel's time slice kept: it refused {slice_us} us", file=sys.stderr)
        return cls(name, popen, log_path, log_file, log_offset)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the child still runs (reaps it once it has exited)."""
        return self.popen.poll() is None

    def exit_code(self) -> int | None:
        """The exit code once the child has exited (negative: killed by that signal), else None."""
        return self.popen.poll()

    def stop(self, callers_gone: bool = False, timeout_s: float = 15.0) -> int:
        """Sends SIGTERM, waits, then SIGKILLs; returns the exit code. Safe to call again.

        Args:
            callers_gone: send SIGINT instead: whatever calls this process has stopped already, so a
                Ferry service skips its shutdown delay (``ServiceSettings.shutdown_delay_s``).
            timeout_s: how long to wait before the SIGKILL.
        """
        if self.alive():
            self.popen.send_signal(signal.SIGINT if callers_gone else signal.SIGTERM)
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


@dataclass(frozen=True)
class NatsCluster:
    """Where one node of a local NATS cluster routes: every node gets ``name`` and all route ports."""

    name: str
    route_ports: tuple[int, ...]
    """The cluster (route) port of every node, this one's included; node ``i`` listens on the i-th."""


def nats_command(
    port: int,
    store_dir: Path,
    host: str = "127.0.0.1",
    cluster: NatsCluster | None = None,
    node: int = 0,
) -> list[str]:
    """Writes nats-server's config (JetStream on ``host:port``, streams in ``store_dir``); returns argv.

    With ``cluster``, the server is node ``node`` of it: it listens for routes on its own port,
    routes to every other node, and takes part in JetStream's replication (each node needs a
    ``server_name`` of its own for that).
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    config = store_dir / "nats.conf"
    # Images travel inside job items, so the 1 MiB default payload limit is raised on purpose.
    text = f'listen: "{host}:{port}"\nmax_payload: {NATS_MAX_PAYLOAD}\n'
    text += f'jetstream {{\n  store_dir: "{store_dir}"\n}}\n'
    if cluster is not None:
        routes = ", ".join(
            f'"nats://{host}:{route}"' for i, route in enumerate(cluster.route_ports) if i != node
        )
        text += (
            f'server_name: "{cluster.name}-{node}"\n'
            f'cluster {{\n  name: "{cluster.name}"\n'
            f'  listen: "{host}:{cluster.route_ports[node]}"\n  routes: [{routes}]\n}}\n'
        )
    config.write_text(text)
    return [venv_binary("nats-server"), "-c", str(config)]


def nats_environment(memory_limit: str) -> dict[str, str]:
    """nats-server's environment: its Go runtime's soft memory limit (``StackSettings.nats_memory_limit``)."""
    return {"GOMEMLIMIT": memory_limit}


def start_nats(
    port: int,
    store_dir: Path,
    log_dir: Path,
    host: str = "127.0.0.1",
    cluster: NatsCluster | None = None,
    node: int = 0,
    memory_limit: str = "off",
) -> ManagedProcess:
    """Starts nats-server with JetStream on ``host:port``, storing streams in ``store_dir``.

    With ``cluster``, it is node ``node`` of that cluster, logging to ``nats-<node>.log``;
    ``memory_limit``: its ``GOMEMLIMIT`` (``nats_environment``).
    """
    name = "nats" if cluster is None else f"nats-{node}"
    argv = nats_command(port, store_dir, host, cluster, node)
    process = ManagedProcess.start(name, argv, log_dir, nats_environment(memory_limit))
    wait_for_port(host, port, timeout_s=20, process=process)
    return process


def prepare_streams(url: str, replicas: int, timeout_s: float) -> None:
    """Creates Ferry's streams with ``replicas`` copies once JetStream answers at ``url``.

    A new cluster elects its JetStream leader a few seconds after its nodes start; until then every
    stream request times out. Services create the streams too (idempotently), but starting them
    after this means none of them spends its start on that election.

    Raises:
        TimeoutError: JetStream did not take the streams within ``timeout_s``.
    """
    # Imported here: `ferry status` and the other light commands need none of nats-py.
    import asyncio
    from contextlib import AsyncExitStack

    from services.common import messaging

    async def create() -> None:
        async with AsyncExitStack() as stack:
            _, js = await messaging.connect(url, "ferry-up", stack)
            # Each waits for JetStream's election itself (messaging.until_jetstream_answers).
            async with asyncio.timeout(timeout_s):
                await messaging.ensure_streams(js, replicas)
                await messaging.open_cancelled_bucket(js, replicas)

    asyncio.run(create())


class Postgres:
    """A real PostgreSQL 16 (from the pgserver package) with its data in ``data_dir``.

    The server listens on a unix socket inside ``data_dir`` only, never on a TCP port.
    """

    def __init__(self, data_dir: Path) -> None:
        # Imported here: pgserver is slow to import, and `ferry status` needs none of it.
        try:
            with warnings.catch_warnings():
                # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR
                # (a container, ssh without a login session) that warns on every `ferry up`,
                # though the fallback it takes (/tmp/runtime-<uid>) works.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
                from pgserver.postgres_server import get_server
        except ModuleNotFoundError as err:
            raise FileNotFoundError(
                "pgserver is not installed: the local stack needs the `stack` extra "
                "(`make install`, or `pip install -e '.[stack]'`)"
            ) from err

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server = get_server(data_dir, cleanup_mode="stop")
        self.log_path = data_dir / "log"
        """pg_ctl's server log, appended to by every start."""

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

    def alive(self) -> bool:
        """Whether the postmaster still runs (it is no child of ours: pg_ctl daemonizes it)."""
        pid = self._server.get_pid()
        return pid is not None and pid_alive(int(pid))

    def exit_code(self) -> int | None:
        """Always None: the postmaster is not our child, so its exit status is not ours to read."""
        return None

    def stop(self, callers_gone: bool = False) -> None:
        """Stops the server (pg_ctl waits for it); its data stays for the next start. Postgres has
        no shutdown delay, so ``callers_gone`` changes nothing.

        Also releases pgserver's handle on a server that died, so that a new ``Postgres`` on the same
        data directory starts a fresh postmaster instead of reusing the dead one's record.
        """
        if not self.alive():
            # A killed postmaster stays a zombie until init reaps it. Both pgserver and a new
            # postmaster would take its postmaster.pid for a live server (pgserver would even try to
            # stop it), so wait until it is gone for good.
            wait_gone(self.pid, timeout_s=10)
        self._server.cleanup()
        # pgserver keeps the handle when another (maybe long dead) process is listed as a user of
        # the same data directory, and would hand this dead server out again on the next start.
        instances = type(self._server)._instances
        if instances.get(self._server.pgdata) is self._server:
            del instances[self._server.pgdata]
