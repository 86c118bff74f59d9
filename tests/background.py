"""Checks of the checkout that run as a subprocess at idle priority from the session's start.

mypy strict on the code takes about a minute of one core from a cold cache (a fresh clone, CI),
and the suite spends much of its time waiting for stacks to start and stop, with a core idle. So
``tests/conftest.py`` starts such a check when collection is done, if its test was selected, at the
lowest priority (it takes only what the tests leave), and the test collects its answer where it
used to run it, raising it back to the test's own priority if it still runs then. The assertions
are the test's own, on the same command's output; a run where its check was not started (no
conftest, ``-p no:...``) runs the command itself, as before.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

from devstack.infra import lower_priority

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT_S = 600.0

CHECKS: dict[str, tuple[str, ...]] = {
    "tests/test_lint.py::test_mypy_strict": (str(BIN / "mypy"), "services", "devstack", "clients", "tools"),
}
"""The test (node id) that asserts on each check, and the check's command, run in the checkout."""


class _Started:
    def __init__(self, argv: tuple[str, ...]) -> None:
        self.argv = argv
        self.output: IO[str] = tempfile.TemporaryFile("w+")
        # Its own session: with the kernel's autogroups, that is its own group, whose nice ranks it
        # below every test and stack process (lower_priority says why both are set).
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, stdout=self.output, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        lower_priority(self.popen.pid, 19)
        # Reaped as soon as it exits, not left a zombie until its test comes (minutes later).
        threading.Thread(target=self.popen.wait, name=f"reap-{self.popen.pid}", daemon=True).start()

    def result(self) -> subprocess.CompletedProcess[str]:
        if self.popen.poll() is None:
            # Its test waits for it now, so nothing else of the suite wants the CPU: back to the
            # test's own priority, else on a machine shared with other work it would crawl at nice 19.
            _restore_priority(self.popen.pid)
        try:
            code = self.popen.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise
        self.output.seek(0)
        out = self.output.read()
        self.output.close()
        return subprocess.CompletedProcess(self.argv, code, out, "")


def _restore_priority(pid: int) -> None:
    """Gives ``pid`` this process's nice and autogroup nice again (a no-op without the privilege)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0))
    with contextlib.suppress(OSError, ValueError, IndexError):
        # "/autogroup-123 nice 5": the nice of this process's own group
        own = Path("/proc/self/autogroup").read_text().split()[-1]
        Path(f"/proc/{pid}/autogroup").write_text(own)


_started: dict[str, _Started] = {}


def start(selected: list[str]) -> None:
    """Starts the check of each selected test that has one (node ids, as pytest collected them)."""
    for nodeid in selected:
        if nodeid in CHECKS and nodeid not in _started:
            _started[nodeid] = _Started(CHECKS[nodeid])


def result(nodeid: str) -> subprocess.CompletedProcess[str]:
    """The check's outcome: waits for the one started in the background, or runs it now."""
    started = _started.pop(nodeid, None)
    if started is None:
        argv = CHECKS[nodeid]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    return started.result()


def stop() -> None:
    """Ends the checks whose tests did not run (a session stopped early, ``-x``)."""
    for started in _started.values():
        if started.popen.poll() is None:
            started.popen.kill()
            started.popen.wait()
        started.output.close()
    _started.clear()
