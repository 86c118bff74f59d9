"""The supervisor with real (tiny) child processes: restarts, crash loops, status, surge restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from devstack.control import act, rolling_restart
from devstack.infra import ManagedProcess, free_port, pid_alive
from devstack.status import ProcessStatus, StackStatus, read_status
from devstack.supervisor import Program, Supervisor
from services.common.probe import is_serving
from tests.e2e.stack import FERRY

ROOT = Path(__file__).resolve().parents[2]
CHILD_ENV = {"PYTHONPATH": str(ROOT)}


def _program(name: str, code: str, logs: Path, probe: Callable[[], bool] = lambda: True) -> Program[Any]:
    argv = [sys.executable, "-c", code]
    return Program(
        name, partial(ManagedProcess.start, name, argv, logs, CHILD_ENV), probe, logs / f"{name}.log"
    )


def _eventually(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Polls ``check`` until it returns something truthy; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    pytest.fail(f"not within {timeout_s}s: {check}")


class Running:
    """A supervisor running its loop in a thread, as ``ferry up`` runs it."""

    def __init__(self, state_dir: Path) -> None:
        self.supervisor = Supervisor(state_dir, ready_timeout_s=60)
        self.stopping = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.supervisor.run(self.stopping)

    def status(self) -> StackStatus:
        status = read_status(self.supervisor.state_dir)
        assert status is not None
        return status

    def process(self, name: str) -> ProcessStatus:
        """What status.json says about ``name`` (a stand-in "absent" until it is listed)."""
        return self.status().processes.get(name) or ProcessStatus(None, "stopped")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path)
    running.supervisor.begin()
    yield running
    running.stopping.set()
    running.thread.join(timeout=30)
    running.supervisor.stop()


def _ferry_status(state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FERRY_STATE_DIR": str(state_dir)}
    return subprocess.run([FERRY, "status"], env=env, capture_output=True, text=True, timeout=60)


def test_killed_process_is_restarted_with_the_same_command_and_shown_in_status(
    running: Running, tmp_path: Path
) -> None:
    sleeper = running.supervisor.start(_program("sleeper", "import time; time.sleep(600)", tmp_path / "logs"))
    running.thread.start()
    _eventually(lambda: running.process("sleeper").state == "running")

    os.kill(sleeper.pid, signal.SIGKILL)
    after = _eventually(
        lambda: (p := running.process("sleeper")).state == "running" and p.pid != sleeper.pid and p
    )
    assert (after.restarts, after.last_exit_code, after.serving) == (1, -signal.SIGKILL, True)

    shown = _ferry_status(tmp_path)
    assert shown.returncode == 0, shown.stderr
    row = next(line.split() for line in shown.stdout.splitlines() if line.startswith("sleeper"))
    assert row[:5] == ["sleeper", "running", str(after.pid), "1", "yes"]

    running.stopping.set()
    running.thread.join(timeout=30)
    running.supervisor.stop()
    assert running.code == 0
    assert not (tmp_path / "status.json").exists()
    assert not pid_alive(after.pid)


def test_crash_loop_stops_with_exit_1_and_shows_only_this_runs_log(
    running: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "crasher.log").write_text("a line from an earlier ferry up\n")
    code = "import sys; print('bad config: this run', flush=True); sys.exit(3)"
    running.supervisor.start(_program("crasher", code, logs))
    running.thread.start()
    running.thread.join(timeout=90)  # the 6th exit comes after 0.5 + 1 + 2 + 4 + 8 s of backoff

    assert running.code == 1
    out, err = capsys.readouterr()
    assert "crasher exited (code 3); restarting in 0.5 s (restart 1)" in out
    assert "crasher exited (code 3); restarting in 8 s (restart 5)" in out
    assert "crasher restarted more than 5 times within 120 s (crash loop)" in err
    assert err.count("bad config: this run") == 6
    assert "earlier ferry up" not in err


def test_surge_restart_starts_the_new_process_before_stopping_the_old(
    running: Running, tmp_path: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "tests.devstack.children", "health", str(port)]
    logs = tmp_path / "logs"
    program = Program(
        "svc",
        partial(ManagedProcess.start, "svc", argv, logs, CHILD_ENV),
        partial(is_serving, f"127.0.0.1:{port}", timeout_s=1.0),
        logs / "svc.log",
        surge=True,
        ready_line="started:",
    )
    old = running.supervisor.start(program)
    running.supervisor.wait_serving("svc", 60)
    running.thread.start()
    _eventually(lambda: running.process("svc").serving)

    assert rolling_restart(tmp_path, ["svc"], timeout_s=120) == 0
    new_pid = running.process("svc").pid
    assert new_pid not in (None, old.pid)
    assert not pid_alive(old.pid)
    assert is_serving(f"127.0.0.1:{port}")
    # The old process served until the replacement had started: no moment without a server.
    lines = [
        line for line in (logs / "svc.log").read_text().splitlines() if line.startswith(("started", "stop"))
    ]
    assert lines == [f"started: pid {old.pid}", f"started: pid {new_pid}", f"stopping pid {old.pid}"]
    status = running.process("svc")
    assert (status.restarts, status.state, status.last_exit_code) == (1, "running", 0)

    assert rolling_restart(tmp_path, ["nope"]) == 2


def test_status_says_when_no_supervisor_runs(tmp_path: Path) -> None:
    missing = _ferry_status(tmp_path)
    assert missing.returncode == 1
    assert "no Ferry stack is running" in missing.stdout

    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a supervisor pid that no longer runs
    dead.wait()
    (tmp_path / "status.json").write_text(
        json.dumps({"updated": time.time(), "supervisor_pid": dead.pid, "processes": {}})
    )
    stale = _ferry_status(tmp_path)
    assert stale.returncode == 1
    assert "no Ferry stack is running" in stale.stdout


def test_stop_holds_a_process_down_until_start(running: Running, tmp_path: Path) -> None:
    program = _program("svc", "import time; time.sleep(600)", tmp_path / "logs")
    first = running.supervisor.start(program)
    running.thread.start()
    _eventually(lambda: running.process("svc").state == "running")

    assert act(tmp_path, "stop", ["svc"]) == 0
    assert not pid_alive(first.pid)
    time.sleep(2)  # several supervisor ticks: a held process is not restarted
    held = running.process("svc")
    assert (held.state, held.pid, held.serving) == ("stopped", None, False)
    assert act(tmp_path, "stop", ["svc"]) == 1  # stopped already

    assert act(tmp_path, "start", ["svc"]) == 0
    back = _eventually(lambda: running.process("svc") if running.process("svc").state == "running" else None)
    assert back.pid not in (None, first.pid)
    assert act(tmp_path, "start", ["svc"]) == 1  # not stopped


def test_stopping_the_stack_stops_a_groups_processes_together_without_their_shutdown_delay(
    running: Running, tmp_path: Path
) -> None:
    """Replicas of a service whose callers stopped before them (``ferry up`` stops in reverse start
    order): they need not leave balancers, and none waits for another to exit."""
    logs, barrier = tmp_path / "logs", tmp_path / "barrier"
    barrier.mkdir()
    names = ["svc-0", "svc-1"]
    for name in names:
        port = free_port()
        env = {
            **CHILD_ENV,
            "FERRY_GRPC_PORT": str(port),
            "FERRY_METRICS_PORT": "0",
            "FERRY_SHUTDOWN_DELAY_S": "30",  # as a replica under `ferry up` has (5 s there)
        }
        argv = [sys.executable, "-m", "tests.devstack.children", "service", str(barrier), str(len(names))]
        program = Program(
            name,
            partial(ManagedProcess.start, name, argv, logs, env),
            partial(is_serving, f"127.0.0.1:{port}", timeout_s=1.0),
            logs / f"{name}.log",
            group="svc",
        )
        running.supervisor.start(program)
    for name in names:
        running.supervisor.wait_serving(name, 60)
    running.thread.start()

    running.stopping.set()
    running.thread.join(timeout=30)
    running.supervisor.stop()

    for name in names:
        log = (logs / f"{name}.log").read_text()
        assert "others stopping too" in log, log  # each was told before the other had exited
        assert "leaving: NOT_SERVING" not in log, log
        assert "shutting down: draining" in log, log


@pytest.mark.skipif(os.geteuid() != 0, reason="a higher priority needs CAP_SYS_NICE")
def test_a_negative_niceness_puts_the_process_ahead_of_other_sessions(tmp_path: Path) -> None:
    # FERRY_ENVOY_NICENESS: Envoy's session group weighs more than the others', so an over-bound
    # call's 429 does not wait for a core behind the model's threads.
    process = ManagedProcess.start("edge", ["sleep", "30"], tmp_path, niceness=-10)
    try:
        autogroup = Path(f"/proc/{process.pid}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text().split()[-1] == "-10"
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == -10
    finally:
        process.stop()
