"""Keeps the local stack's processes up, the way systemd or Kubernetes keep theirs.

- A process that exits without being asked to (with any code: a SIGTERMed service must come back
  too) is started again, alike, after a backoff: 0.5 s, doubling to at most 10 s, back to 0.5 s
  once a process has run for 60 s. The other processes keep serving meanwhile.
- More than 5 restarts of one process within 120 s is a crash loop, which no waiting fixes: the
  supervisor gives up, and shows that process's log from this run so the cause is on screen.
- ``<state_dir>/status.json`` says what each process is doing (``devstack.status``).
- ``ferry restart`` asks for a rolling restart through ``<state_dir>/control/`` (``devstack.control``).

Four threads: the caller's loop (exits and restarts), a prober (one probe per process a second,
so probing stays cheap), the status writer, and one worker for restart requests (a surge restart
takes as long as a service's start, and crashes elsewhere must not wait for it).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from devstack import control
from devstack.control import RestartResult
from devstack.status import ProcessStatus, StackStatus, State, status_path, write_status

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
BACKOFF_RESET_AFTER_S = 60.0
"""A process that ran this long before exiting restarts after the first, short backoff again."""
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_S = 120.0
"""More than CRASH_LOOP_RESTARTS restarts of one process within this window stop the stack."""
TICK_S = 0.1
PROBE_EVERY_S = 1.0
STATUS_EVERY_S = 0.5
LOG_LINES_SHOWN = 100


class Handle(Protocol):
    """A running process: a child of ours, or Postgres's postmaster (which pg_ctl daemonizes)."""

    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def exit_code(self) -> int | None: ...

    def stop(self, callers_gone: bool = False) -> object:
        """Stops it gracefully (SIGTERM, then SIGKILL); also releases an exited one's resources.

        ``callers_gone``: whatever calls it has stopped already (the whole stack stops), so it need
        not wait for balancers to move away before it drains (a service gets SIGINT).
        """
        ...


H = TypeVar("H", bound=Handle, covariant=True)


@dataclass(frozen=True)
class Program(Generic[H]):
    """How to start one process, kept so that every restart starts it alike (same env, same ports)."""

    name: str
    launch: Callable[[], H]
    """Starts the process; returns at once (Postgres: once pg_ctl says it started)."""
    probe: Callable[[], bool]
    """Whether it serves now (asked only while the process is alive); must be cheap."""
    log_path: Path
    """The log the process appends to, across runs."""
    surge: bool = False
    """On a rolling restart, start the replacement beside the old process on the same ports
    (they bind with SO_REUSEPORT) and stop the old one once the new one serves."""
    ready_line: str = ""
    """Text the process logs once ready. Tells a surge replacement's readiness from the old
    process's, since both answer the probe on the same port."""
    group: str = ""
    """Programs started one after another with the same group (a service's replicas) stop together
    when the whole stack stops; empty: the program stops alone."""


@dataclass
class _Unit:
    """One supervised program and what happened to it in this run. Guarded by the lock."""

    program: Program[Any]
    handle: Handle | None = None
    replacement: Handle | None = None
    """A surge replacement while it starts beside ``handle``."""
    state: State = "starting"
    since: float = field(default_factory=time.time)
    launched_at: float = 0.0
    """time.monotonic() of the current process's start, for the backoff reset."""
    restarts: int = 0
    last_exit_code: int | None = None
    serving: bool = False
    busy: bool = False
    """A restart request owns the unit; the loop leaves it alone."""
    failures: int = 0
    """Consecutive short-lived runs: the exponent of the backoff."""
    restart_at: float = 0.0
    recent: deque[float] = field(default_factory=deque)
    """time.monotonic() of the restarts within the crash-loop window."""
    run_log_offset: int | None = None
    """Where this run's output begins in the log (the size at the first start)."""
    launch_offset: int = 0
    """Where the current process's output begins in the log."""

    def status(self) -> ProcessStatus:
        pid = self.handle.pid if self.handle is not None and self.state != "stopped" else None
        return ProcessStatus(pid, self.state, self.restarts, self.serving, self.since, self.last_exit_code)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def log_since(path: Path, offset: int, lines: int = LOG_LINES_SHOWN) -> str:
    """The last ``lines`` lines written to ``path`` after byte ``offset``."""
    if not path.exists():
        return "(no log)"
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace").splitlines()
    skipped = f"... ({len(text) - lines} earlier lines in {path})\n" if len(text) > lines else ""
    return skipped + "\n".join(text[-lines:])


def _logged(path: Path, offset: int, text: str) -> bool:
    """Whether ``text`` was written to ``path`` after byte ``offset``."""
    with path.open("rb") as log:
        log.seek(offset)
        return text.encode() in log.read()


def _code(code: int | None) -> str:
    return "unknown" if code is None else str(code)


def _say(message: str) -> None:
    print(message, flush=True)


def _stop(handle: Handle, callers_gone: bool = False) -> None:
    """Stops ``handle``; a failure to stop one process must not stop the supervisor."""
    try:
        handle.stop(callers_gone)
    except Exception as err:
        print(f"could not stop pid {handle.pid} cleanly: {err!r}", file=sys.stderr, flush=True)


def _stop_together(handles: list[Handle]) -> None:
    """Stops ``handles`` at once (their callers are gone) and returns once all have exited."""
    threads = [threading.Thread(target=_stop, args=(handle, True)) for handle in handles[1:]]
    for thread in threads:
        thread.start()
    if handles:
        _stop(handles[0], callers_gone=True)
    for thread in threads:
        thread.join()


class Supervisor:
    """Starts programs, restarts them when they exit, and reports on them.

    Usage: ``begin()``, ``start()`` each program (``wait_serving`` where order matters), ``run()``
    until asked to stop, then ``stop()``.
    """

    def __init__(self, state_dir: Path, ready_timeout_s: float = 180.0) -> None:
        self.state_dir = state_dir
        self.ready_timeout_s = ready_timeout_s
        self._units: dict[str, _Unit] = {}
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []

    def begin(self) -> None:
        """Starts writing status.json, probing, and taking restart requests."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        control.clear(self.state_dir)
        for name, target in (
            ("status", self._write_status_forever),
            ("probe", self._probe_forever),
            ("requests", self._serve_requests_forever),
        ):
            thread = threading.Thread(target=target, name=f"supervisor-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def start(self, program: Program[H]) -> H:
        """Starts ``program`` for the first time; a failure to launch raises."""
        unit = _Unit(program)
        with self._lock:
            self._units[program.name] = unit
        return self._launch(unit, program.launch)

    def _launch(self, unit: _Unit, launch: Callable[[], H]) -> H:
        offset = _size(unit.program.log_path)
        handle = launch()
        with self._lock:
            unit.run_log_offset = offset if unit.run_log_offset is None else unit.run_log_offset
            unit.handle, unit.launch_offset = handle, offset
            unit.state, unit.serving, unit.since = "starting", False, time.time()
            unit.launched_at = time.monotonic()
        return handle

    def wait_serving(self, name: str, timeout_s: float) -> None:
        """Waits until ``name`` serves.

        Raises:
            RuntimeError: it exited first (the message holds its log).
            TimeoutError: it did not serve within ``timeout_s``.
        """
        unit = self._units[name]
        with self._lock:
            handle, offset = unit.handle, unit.launch_offset
        if handle is None:
            raise RuntimeError(f"{name} is not running")
        self._await_serving(unit, handle, offset, timeout_s, need_line=False)

    def _await_serving(
        self, unit: _Unit, handle: Handle, offset: int, timeout_s: float, need_line: bool
    ) -> None:
        """Waits until ``handle`` (whose output starts at ``offset``) serves.

        Raises:
            RuntimeError: it exited first, or the supervisor is stopping.
            TimeoutError: it did not serve within ``timeout_s``.
        """
        program = unit.program
        deadline = time.monotonic() + timeout_s
        while not self._closing.is_set():
            if not handle.alive():
                raise RuntimeError(
                    f"{program.name} exited (code {_code(handle.exit_code())}) while starting; "
                    f"log:\n{log_since(program.log_path, offset, 30)}"
                )
            if (not need_line or _logged(program.log_path, offset, program.ready_line)) and self._probe(unit):
                with self._lock:
                    if unit.handle is handle:
                        unit.state, unit.serving = "running", True
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{program.name} not serving within {timeout_s:.0f} s; "
                    f"log:\n{log_since(program.log_path, offset, 30)}"
                )
            self._closing.wait(0.2)
        raise RuntimeError("the stack is stopping")

    def pids(self) -> dict[str, int]:
        """The current process id of every program that runs."""
        with self._lock:
            return {n: u.handle.pid for n, u in self._units.items() if u.handle is not None}

    def run(self, stopping: threading.Event) -> int:
        """Restarts whatever exits until ``stopping`` is set; returns 0, or 1 after a crash loop."""
        while not stopping.wait(TICK_S):
            looping = self._tick()
            if looping is not None:
                program = looping.program
                print(
                    f"\n{program.name} restarted more than {CRASH_LOOP_RESTARTS} times within "
                    f"{CRASH_LOOP_WINDOW_S:.0f} s (crash loop); stopping Ferry. "
                    f"Its log from this run ({program.log_path}):\n"
                    f"{log_since(program.log_path, looping.run_log_offset or 0)}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        return 0

    def _tick(self) -> _Unit | None:
        """Notices exits and starts due restarts; returns a unit that is crash-looping, if any."""
        for unit in list(self._units.values()):
            with self._lock:
                if unit.busy:
                    continue
                due = unit.state == "restarting" and time.monotonic() >= unit.restart_at
                watched = unit.handle if unit.state in ("starting", "running") else None
                if due:
                    unit.state = "starting"  # claimed: the restart worker leaves a starting unit alone
            if watched is not None and not watched.alive():
                with self._lock:
                    if unit.busy or unit.handle is not watched:  # a restart request got there first
                        continue
                    unit.handle = None
                code = watched.exit_code()
                _stop(watched)  # closes its log; releases pgserver's record of a dead postmaster
                if self._schedule_restart(unit, code, f"exited (code {_code(code)})"):
                    return unit
            elif due:
                try:
                    self._launch(unit, unit.program.launch)
                except Exception as err:  # whatever went wrong, the next try may go right
                    if self._schedule_restart(unit, None, f"failed to start ({err})"):
                        return unit
        return None

    def _schedule_restart(self, unit: _Unit, code: int | None, what: str) -> bool:
        """Books a restart after the backoff; returns True instead when that would be a crash loop."""
        now = time.monotonic()
        with self._lock:
            if now - unit.launched_at >= BACKOFF_RESET_AFTER_S:
                unit.failures = 0
            delay = min(BACKOFF_FIRST_S * 2**unit.failures, BACKOFF_MAX_S)
            unit.failures += 1
            unit.recent.append(now)
            while now - unit.recent[0] > CRASH_LOOP_WINDOW_S:
                unit.recent.popleft()
            unit.last_exit_code, unit.serving, unit.since = code, False, time.time()
            if len(unit.recent) > CRASH_LOOP_RESTARTS:
                unit.state = "stopped"
                return True
            unit.restarts += 1
            unit.state, unit.restart_at = "restarting", now + delay
        _say(f"{unit.program.name} {what}; restarting in {delay:g} s (restart {unit.restarts})")
        return False

    def restart(self, name: str) -> RestartResult:
        """Replaces ``name``'s process and returns once the new one serves.

        Programs with ``surge`` (the four gRPC services) get a surge restart, like a Kubernetes
        rolling update with maxSurge=1: the replacement starts on the same ports while the old
        process still serves, and only once it logged ``ready_line`` and answers SERVING does the
        old one get SIGTERM, upon which it drains (health NOT_SERVING, in-flight calls finish).
        NATS, Postgres and Envoy are stopped, then started: NATS and Postgres own their data
        directories exclusively, and Envoy is one process clients reconnect to within a second.
        """
        unit = self._units.get(name)
        if unit is None:
            return RestartResult(name, ok=False, message=f"no process named {name}")
        with self._lock:
            old = unit.handle
            if unit.busy or unit.state != "running" or old is None:
                state = "being restarted" if unit.busy else unit.state
                return RestartResult(name, ok=False, message=f"{name} is {state}; try again once it runs")
            unit.busy, unit.state = True, "restarting"
        try:
            replace = self._surge if unit.program.surge else self._stop_then_start
            return replace(unit, old)
        finally:
            with self._lock:
                unit.busy = False

    def _surge(self, unit: _Unit, old: Handle) -> RestartResult:
        name = unit.program.name
        offset = _size(unit.program.log_path)
        try:
            new = unit.program.launch()
        except Exception as err:
            with self._lock:
                unit.state = "running"
            return RestartResult(name, ok=False, old_pid=old.pid, message=f"could not start: {err}")
        launched, launched_at = time.time(), time.monotonic()
        with self._lock:
            unit.replacement = new
        try:
            self._await_serving(unit, new, offset, self.ready_timeout_s, need_line=True)
        except (RuntimeError, TimeoutError) as err:
            _stop(new)
            with self._lock:
                unit.replacement, unit.state = None, "running"
            return RestartResult(name, False, old.pid, new.pid, f"{err}\n(pid {old.pid} keeps serving)")
        _stop(old)  # SIGTERM: it drains while the replacement takes the new connections
        with self._lock:
            unit.handle, unit.replacement, unit.launch_offset = new, None, offset
            unit.state, unit.serving, unit.since, unit.launched_at = "running", True, launched, launched_at
            unit.restarts += 1
            unit.last_exit_code = old.exit_code()
        _say(f"{name} replaced on request: pid {old.pid} -> {new.pid}")
        return RestartResult(name, True, old.pid, new.pid)

    def _stop_then_start(self, unit: _Unit, old: Handle) -> RestartResult:
        name = unit.program.name
        _stop(old)
        with self._lock:
            unit.last_exit_code = old.exit_code()
            unit.restarts += 1
        try:
            new = self._launch(unit, unit.program.launch)
        except Exception as err:
            with self._lock:  # the loop sees the stopped process and retries with backoff
                unit.state = "running"
            return RestartResult(name, ok=False, old_pid=old.pid, message=f"could not start: {err}")
        try:
            self._await_serving(unit, new, unit.launch_offset, self.ready_timeout_s, need_line=False)
        except (RuntimeError, TimeoutError) as err:  # the loop restarts it if it exited
            return RestartResult(name, False, old.pid, new.pid, str(err))
        _say(f"{name} restarted on request: pid {old.pid} -> {new.pid}")
        return RestartResult(name, True, old.pid, new.pid)

    def _probe(self, unit: _Unit) -> bool:
        try:
            return unit.program.probe()
        except Exception:  # a probe that breaks says "not serving", and the prober lives on
            return False

    def _probe_forever(self) -> None:
        while True:
            began = time.monotonic()
            for unit in list(self._units.values()):
                with self._lock:
                    handle = unit.handle
                serving = handle is not None and handle.alive() and self._probe(unit)
                with self._lock:
                    if unit.handle is handle and unit.state != "stopped":
                        unit.serving = serving
                        if serving and unit.state == "starting":
                            unit.state = "running"
            if self._closing.wait(max(0.0, PROBE_EVERY_S - (time.monotonic() - began))):
                return

    def write_status(self) -> None:
        """Writes status.json now."""
        with self._lock:
            processes = {name: unit.status() for name, unit in self._units.items()}
        with self._write_lock:
            if not self._closing.is_set():
                write_status(self.state_dir, StackStatus(time.time(), os.getpid(), processes))

    def _write_status_forever(self) -> None:
        while True:
            self.write_status()
            if self._closing.wait(STATUS_EVERY_S):
                return

    def hold(self, name: str) -> RestartResult:
        """Stops ``name`` and keeps it stopped (no restart) until ``resume``: an operator's hold."""
        unit = self._units.get(name)
        if unit is None:
            return RestartResult(name, ok=False, message=f"no process named {name}")
        with self._lock:
            if unit.busy or unit.state == "stopped":
                state = "being restarted" if unit.busy else "stopped already"
                return RestartResult(name, ok=False, message=f"{name} is {state}")
            old, unit.handle = unit.handle, None
            unit.state, unit.serving, unit.since = "stopped", False, time.time()
        if old is not None:
            _stop(old)
        _say(f"{name} stopped on request; `ferry start {name}` starts it again")
        pid = old.pid if old is not None else None
        return RestartResult(
            name, True, pid, None, f"stopped (was pid {pid}); `ferry start {name}` resumes it"
        )

    def resume(self, name: str) -> RestartResult:
        """Starts ``name`` again after ``hold``; returns once it serves."""
        unit = self._units.get(name)
        if unit is None:
            return RestartResult(name, ok=False, message=f"no process named {name}")
        with self._lock:
            if unit.state != "stopped" or unit.busy:
                return RestartResult(name, ok=False, message=f"{name} is not stopped (it is {unit.state})")
            unit.busy, unit.failures = True, 0
        try:
            new = self._launch(unit, unit.program.launch)
        except Exception as err:
            with self._lock:
                unit.busy = False
            # From here on it is a crash like any other: the loop keeps trying, with backoff.
            self._schedule_restart(unit, None, f"failed to start ({err})")
            return RestartResult(name, ok=False, message=f"could not start ({err}); retrying with backoff")
        try:
            self._await_serving(unit, new, unit.launch_offset, self.ready_timeout_s, need_line=False)
        except Exception as err:  # the loop restarts it with backoff if it exited
            return RestartResult(name, ok=False, message=f"not serving: {err}")
        finally:
            with self._lock:
                unit.busy = False
        _say(f"{name} started on request: pid {new.pid}")
        return RestartResult(name, True, None, new.pid)

    def _serve_requests_forever(self) -> None:
        actions = {"restart": self.restart, "stop": self.hold, "start": self.resume}
        while not self._closing.wait(0.2):
            for action, name, nonce in control.take_requests(self.state_dir):
                result = actions[action](name)
                self.write_status()  # so `ferry status` right after shows the new pid
                control.write_result(self.state_dir, nonce, result)

    def stop(self) -> None:
        """Stops every process in reverse start order, and removes status.json.

        Each process's callers were started after it, so they have stopped by the time it stops:
        no process waits for balancers to move away, and a group's processes stop together.
        """
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads.clear()
        for units in _groups(reversed(list(self._units.values()))):
            handles: list[Handle] = []
            with self._lock:
                for unit in units:
                    handles += [h for h in (unit.replacement, unit.handle) if h is not None]
                    unit.state, unit.replacement = "stopped", None
            _stop_together(handles)
        with self._write_lock:
            status_path(self.state_dir).unlink(missing_ok=True)


def _groups(units: Iterable[_Unit]) -> Iterator[list[_Unit]]:
    """``units`` in their order, neighbours of one ``Program.group`` together."""
    for _, together in itertools.groupby(units, key=_group_of):
        yield list(together)


def _group_of(unit: _Unit) -> tuple[str, str]:
    group = unit.program.group
    return (group, "") if group else ("", unit.program.name)
