"""Batch work kept to some cores (``services.common.cpus``): what a spec names, and that a pinned
thread's later threads, and a whole pinned process's, stay there (read from the kernel, not timed:
what it buys the other tenants is measured by ``benchmarks.bulk --job-cpus``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.common import cpus
from services.inference.settings import InferenceSettings
from services.jobs.settings import JobsSettings

ALLOWED = set(os.sched_getaffinity(0))
LAST = max(ALLOWED)


@pytest.mark.parametrize(
    ("spec", "cores"),
    [
        ("", None),
        ("  ", None),
        ("last", {3}),
        ("1", {1}),
        ("1-3", {1, 2, 3}),
        ("0,2", {0, 2}),
        ("2-9", {2, 3}),  # only the cores this process may use
    ],
)
def test_a_spec_names_cores_among_the_allowed_ones(spec: str, cores: set[int] | None) -> None:
    assert cpus.parse(spec, allowed={0, 1, 2, 3}) == cores


@pytest.mark.parametrize("spec", ["one", "1-", "-1", "1;2", "4", "7-9"])
def test_a_malformed_spec_or_one_without_an_allowed_core_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=repr(spec)):
        cpus.parse(spec, allowed={0, 1, 2, 3})


@pytest.mark.parametrize(
    ("spec", "cores"), [("last", {7}), ("5", {5}), ("0-5", {4, 5}), ("4,6-9", {4, 6, 7})]
)
def test_a_container_on_cores_4_to_7_is_read_in_the_hosts_numbers(spec: str, cores: set[int]) -> None:
    """A container's cpuset (``docker run --cpuset-cpus 4-7``, a pod with cores of its own) keeps the
    host's core numbers: ``sched_getaffinity`` in it says {4, 5, 6, 7}, not 0-3."""
    assert cpus.parse(spec, allowed={4, 5, 6, 7}) == cores
    with pytest.raises(ValueError, match=r"names none of the cores this process may use \(\[4, 5, 6, 7\]\)"):
        cpus.parse("0-3", allowed={4, 5, 6, 7})


PINNED = """
import os, sys
from services.common import cpus
os.sched_setaffinity(0, {0})  # as a container's cpuset of core 0 alone on a larger machine
print(sorted(cpus.parse("last")))
try:
    cpus.parse(sys.argv[1])
except ValueError as err:
    print(err)
"""


@pytest.mark.skipif(len(ALLOWED) < 2 or 0 not in ALLOWED, reason="needs core 0 and another")
def test_last_is_the_highest_core_this_process_may_use_not_the_machines() -> None:
    """Read from the kernel (``sched_getaffinity``), as in a container: a process kept to core 0."""
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-c", PINNED, str(LAST)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=root, check=True)

    last, refused = done.stdout.splitlines()
    assert last == "[0]"
    assert refused == f"'{LAST}' names none of the cores this process may use ([0])"


def test_the_settings_refuse_a_spec_that_names_no_core_here() -> None:
    missing = str(max(ALLOWED) + 1)
    with pytest.raises(ValueError, match="names none of the cores"):
        InferenceSettings(job_cpus=missing)
    with pytest.raises(ValueError, match="names none of the cores"):
        JobsSettings(cpus=missing)
    assert InferenceSettings().job_cpus == JobsSettings().cpus == ""  # off by default


def test_a_pinned_threads_later_threads_keep_to_its_cores() -> None:
    seen: list[set[int]] = []

    def pinned() -> None:
        cpus.pin_this_thread({LAST})
        child = threading.Thread(target=lambda: seen.append(set(os.sched_getaffinity(0))))
        child.start()
        child.join()
        seen.append(set(os.sched_getaffinity(0)))

    thread = threading.Thread(target=pinned)
    thread.start()
    thread.join()

    assert seen == [{LAST}, {LAST}]
    assert set(os.sched_getaffinity(0)) == ALLOWED  # only that thread moved


PROCESS = """
import os, threading, time
from services.common import cpus
before = threading.Thread(target=time.sleep, args=(30,), daemon=True)
before.start()
print(cpus.pin_process(cpus.parse("last")), flush=True)
after = threading.Thread(target=time.sleep, args=(30,), daemon=True)
after.start()
print(sorted({frozenset(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}), flush=True)
"""


def test_a_whole_process_keeps_to_its_cores_threads_started_before_and_after() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", PROCESS], capture_output=True, text=True, timeout=60, cwd=root, check=True
    )

    pinned, affinities = done.stdout.splitlines()
    assert int(pinned) >= 2  # the main thread and the one started before
    assert affinities == f"[frozenset({{{LAST}}})]"


def allowed_cores(pid: int) -> set[str]:
    """The distinct ``Cpus_allowed_list`` of process ``pid``'s threads."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            found.add((task / "status").read_text().split("Cpus_allowed_list:")[1].split()[0])
    return found


def test_the_jobs_service_keeps_to_its_cpus_before_it_connects() -> None:
    """``FERRY_JOBS_CPUS`` through ``python -m services.jobs``: every thread of the process keeps to
    the named core, pinned before it connects anywhere (here NATS never answers)."""
    root = Path(__file__).resolve().parents[2]
    env = os.environ | {
        "FERRY_JOBS_CPUS": "last",
        "FERRY_JOBS_NATS_URL": "nats://127.0.0.1:1",
        "FERRY_JOBS_GRPC_PORT": "0",
        "FERRY_JOBS_METRICS_PORT": "0",
    }
    jobs = subprocess.Popen(
        [sys.executable, "-m", "services.jobs"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60  # its imports, then start() pins it and tries NATS
        while allowed_cores(jobs.pid) != {str(LAST)} and time.monotonic() < deadline:
            assert jobs.poll() is None, "the jobs service exited"
            time.sleep(0.2)
        threads = len(os.listdir(f"/proc/{jobs.pid}/task"))
        allowed = allowed_cores(jobs.pid)
    finally:
        jobs.kill()
        jobs.wait()

    assert allowed == {str(LAST)}
    assert threads > 1  # gRPC's and the runtime's threads too, not only the main one
