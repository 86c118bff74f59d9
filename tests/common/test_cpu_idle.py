"""Batch work joins the machine's ``cpu.idle`` cgroup where it can, and carries on where it cannot.

Membership is read where the kernel keeps it (``/proc/self/task/<tid>/cgroup``), not timed: what
the group buys the other tenants is measured by ``benchmarks.bulk`` and ``benchmarks.wake_latency``.
The group (``ferry-jobs``) is shared by every stack and test on the machine and never removed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from services.common import cpu_idle

WRITABLE = os.geteuid() == 0 and (cpu_idle.V1_ROOT / "cpu.idle").exists()
needs_cgroup = pytest.mark.skipif(not WRITABLE, reason="needs root and the cgroup v1 cpu controller")


def in_a_thread(work: Callable[[], object]) -> tuple[object, str, int]:
    """Runs ``work`` in a new thread: its result, the thread's cpu cgroup after it, its id."""
    seen: list[tuple[object, str, int]] = []

    def run() -> None:
        result = work()
        seen.append((result, cpu_idle.current_group(), threading.get_native_id()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


@needs_cgroup
def test_a_thread_lands_in_the_idle_group_and_its_process_stays() -> None:
    joined, group, _ = in_a_thread(cpu_idle.join_this_thread)

    assert joined is True
    assert group == f"/{cpu_idle.GROUP}"
    assert (cpu_idle.V1_ROOT / cpu_idle.GROUP / "cpu.idle").read_text().strip() == "1"
    assert cpu_idle.current_group() != f"/{cpu_idle.GROUP}"  # only that thread moved


@needs_cgroup
def test_threads_started_from_a_joined_thread_start_in_it() -> None:
    def join_then_start() -> object:
        cpu_idle.join_this_thread()
        return in_a_thread(lambda: None)[1]

    child_group, _, _ = in_a_thread(join_then_start)

    assert child_group == f"/{cpu_idle.GROUP}"


@needs_cgroup
def test_joining_again_and_from_many_threads_at_once_is_harmless() -> None:
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(cpu_idle.join_this_thread())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [True] * 8
    assert in_a_thread(cpu_idle.join_this_thread)[0] is True


@needs_cgroup
def test_a_whole_process_joins() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert cpu_idle.join_process(child.pid) is True
        assert f"cpu:/{cpu_idle.GROUP}" in Path(f"/proc/{child.pid}/cgroup").read_text()
    finally:
        child.kill()
        child.wait()


def test_off_leaves_the_thread_where_it_was() -> None:
    before = cpu_idle.current_group()

    joined, group, _ = in_a_thread(lambda: cpu_idle.join_this_thread("off"))

    assert (joined, group) == (False, before)


def test_a_root_without_cpu_idle_logs_why_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = cpu_idle.current_group()
    with caplog.at_level(logging.WARNING, logger=cpu_idle.__name__):
        joined, group, _ = in_a_thread(lambda: cpu_idle.join_this_thread(root=tmp_path))

    assert (joined, group) == (False, before)
    assert f"{tmp_path} has no cpu.idle" in caplog.text
    assert list(tmp_path.iterdir()) == []  # nothing made there


def test_a_root_that_looks_right_but_is_no_cgroup_is_caught(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes to a plain folder succeed: only the kernel's own record says whether a thread moved."""
    (tmp_path / "cpu.idle").write_text("0\n")
    (tmp_path / cpu_idle.GROUP).mkdir()
    (tmp_path / cpu_idle.GROUP / "cpu.idle").write_text("1\n")
    before = cpu_idle.current_group()
    with caplog.at_level(logging.WARNING, logger=cpu_idle.__name__):
        joined, group, tid = in_a_thread(lambda: cpu_idle.join_this_thread(root=tmp_path))

    assert (joined, group) == (False, before)
    assert f"took thread {tid} but the kernel did not move it" in caplog.text


def test_a_group_that_cannot_be_written_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A read-only /sys (a container's): the group's files cannot be written, root or not. Here
    the group is a procfs folder, where nothing can be created even by root."""
    (tmp_path / "cpu.idle").write_text("0\n")
    (tmp_path / cpu_idle.GROUP).symlink_to("/proc/self/fdinfo")
    before = cpu_idle.current_group()
    with caplog.at_level(logging.WARNING, logger=cpu_idle.__name__):
        joined, group, _ = in_a_thread(lambda: cpu_idle.join_this_thread(root=tmp_path))

    assert (joined, group) == (False, before)
    assert "outside a cpu.idle cgroup" in caplog.text
