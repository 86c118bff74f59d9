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


# --- cgroup v2, against a fake tree ------------------------------------------------------------
# This machine is cgroup v1 (its v2 hierarchy has no controllers), so the v2 path runs here only
# against folders laid out as the kernel shows a v2 cgroup: what it writes where, not whether a
# real kernel moves the thread (docs/inference.md, *The cpu.idle cgroup*).


def fake_v2_cgroup(tmp_path: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    """A v2 cgroup (a container's, say) and the child ``ferry-jobs`` with the interface files the
    kernel gives a new cgroup on ``mkdir``: a domain, not idle, no members."""
    parent = tmp_path / "kubepods.slice" / "pod-1" / "container-1"
    group = parent / cpu_idle.GROUP
    group.mkdir(parents=True)
    (parent / "cgroup.controllers").write_text(f"{controllers}\n")
    (parent / "cgroup.subtree_control").write_text("\n")
    new = {"cgroup.type": "domain\n", "cpu.idle": "0\n", "cgroup.threads": "", "cgroup.procs": ""}
    for name, text in new.items():
        (group / name).write_text(text)
    return parent


def test_on_cgroup_v2_a_thread_goes_to_a_threaded_idle_child_with_cpu_enabled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parent = fake_v2_cgroup(tmp_path)
    group = parent / cpu_idle.GROUP
    before = cpu_idle.current_group()
    with caplog.at_level(logging.WARNING, logger=cpu_idle.__name__):
        joined, after, tid = in_a_thread(lambda: cpu_idle.join_this_thread(root=parent))

    assert (group / "cgroup.type").read_text() == "threaded"  # a thread alone may move only there
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu"
    assert (group / "cpu.idle").read_text() == "1"
    assert (group / "cgroup.threads").read_text() == str(tid)  # the thread, not its process
    assert (group / "cgroup.procs").read_text() == ""
    # Folders, not a cgroupfs: the kernel's record of the thread did not change, and that is said.
    assert (joined, after) == (False, before)
    assert f"took thread {tid} but the kernel did not move it" in caplog.text


def test_on_cgroup_v2_a_process_is_written_whole_and_a_ready_group_is_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parent = fake_v2_cgroup(tmp_path)
    group = parent / cpu_idle.GROUP
    # As the kernel reads them back once another process made the group ready.
    (group / "cgroup.type").write_text("threaded\n")
    (group / "cpu.idle").write_text("1\n")
    (parent / "cgroup.subtree_control").write_text("cpu memory\n")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with caplog.at_level(logging.WARNING, logger=cpu_idle.__name__):
            assert cpu_idle.join_process(child.pid, root=parent) is False
    finally:
        child.kill()
        child.wait()

    assert (group / "cgroup.procs").read_text() == str(child.pid)
    assert f"took process {child.pid} but the kernel did not move it" in caplog.text
    assert cpu_idle.idle_group(parent) == cpu_idle.IdleGroup(group, "cgroup.threads", "cgroup.procs", 2)
    # Nothing rewritten: each file as the kernel showed it.
    assert (group / "cgroup.type").read_text() == "threaded\n"
    assert (group / "cpu.idle").read_text() == "1\n"
    assert (parent / "cgroup.subtree_control").read_text() == "cpu memory\n"


def test_a_v2_cgroup_without_the_cpu_controller_logs_why_and_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parent = fake_v2_cgroup(tmp_path, controllers="memory pids")
    with caplog.at_level(logging.WARNING, logger=cpu_idle.__name__):
        joined, _, _ = in_a_thread(lambda: cpu_idle.join_this_thread(root=parent))

    assert joined is False
    assert f"{parent} has no cpu controller" in caplog.text
    assert (parent / "cgroup.subtree_control").read_text() == "\n"
    assert (parent / cpu_idle.GROUP / "cpu.idle").read_text() == "0\n"


MOUNTINFO = """\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
25 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_this_processs_own_v2_cgroup_is_found_from_mountinfo_and_its_0_line() -> None:
    own = "0::/kubepods.slice/pod-1/container-1\n"
    assert cpu_idle._v2_parent(MOUNTINFO, own) == Path("/sys/fs/cgroup/kubepods.slice/pod-1/container-1")
    assert cpu_idle._v2_parent(MOUNTINFO, "0::/\n") == Path("/sys/fs/cgroup")  # a cgroup namespace's root
    with pytest.raises(OSError, match="no cgroup v2 mount"):
        cpu_idle._v2_parent(MOUNTINFO.replace("cgroup2", "cgroup"), own)
    with pytest.raises(OSError, match="no cgroup v2 mount"):
        cpu_idle._v2_parent(MOUNTINFO, "4:cpu,cpuacct:/\n")


@pytest.mark.parametrize(
    ("record", "version", "inside"),
    [
        ("0::/kubepods.slice/pod-1/container-1/ferry-jobs\n", 2, True),
        ("0::/kubepods.slice/pod-1/container-1\n", 2, False),
        ("4:cpu,cpuacct:/ferry-jobs\n0::/\n", 2, False),  # v1's line does not count on v2
        ("4:cpu,cpuacct:/ferry-jobs\n0::/\n", 1, True),
    ],
)
def test_the_kernels_record_is_read_for_the_groups_version(
    tmp_path: Path, record: str, version: int, inside: bool
) -> None:
    (tmp_path / "cgroup").write_text(record)
    group = cpu_idle.IdleGroup(tmp_path / cpu_idle.GROUP, "cgroup.threads", "cgroup.procs", version)
    assert cpu_idle._in_group(tmp_path / "cgroup", group) is inside
