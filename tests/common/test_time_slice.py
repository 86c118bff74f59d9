"""Short scheduler time slices (services.common.time_slice) against the running kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.common import time_slice

pytestmark = pytest.mark.skipif(
    not time_slice.current_us(0), reason="the kernel keeps no time slice per thread (before Linux 6.12)"
)


def test_a_thread_started_after_the_slice_inherits_it() -> None:
    # In a child of its own: the slice must not stay on the test runner's threads.
    code = (
        "from services.common import time_slice as t; import threading; assert t.shorten(0, 100); "
        "seen = []; th = threading.Thread(target=lambda: seen.append(t.current_us(0))); th.start(); "
        "th.join(); print(t.current_us(0), seen[0])"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["100", "100"]


def test_every_thread_of_a_process_is_shortened_and_keeps_its_policy_and_nice() -> None:
    code = (
        "import os, sys, threading, time; os.nice(3); "
        "os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0)); "
        "[threading.Thread(target=time.sleep, args=(30,), daemon=True).start() for _ in range(3)]; "
        "print('up', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 4
        before = {tid: (os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)) for tid in tids}
        assert {time_slice.current_us(tid) for tid in tids} != {250}

        assert time_slice.shorten_process(child.pid, 250) == 4

        assert {time_slice.current_us(tid) for tid in tids} == {250}
        after = {tid: (os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)) for tid in tids}
        assert after == before
        assert set(before.values()) == {(os.SCHED_BATCH, os.getpriority(os.PRIO_PROCESS, 0) + 3)}
    finally:
        child.kill()
        child.wait()


def test_a_gone_thread_is_not_shortened() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert time_slice.shorten(child.pid, 100) is False
    assert time_slice.current_us(child.pid) is None
