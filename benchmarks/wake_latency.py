"""How late a mostly idle process wakes beside CPU hogs, by the hogs' policy and scheduling group.

``python -m benchmarks.wake_latency [--seconds 8] [--rounds 1]`` runs a *waker* (a process that
sleeps 20 ms at a time and measures how late each sleep ends: what Envoy and the gateway go
through when a call arrives) beside two spinning processes, one row per arrangement:

* no spinners;
* spinners at ``SCHED_OTHER`` in a session of their own (a service of the stack: ``ferry up``
  starts each process as a session, hence an autogroup of its own; a container is a cgroup);
* spinners at ``SCHED_IDLE`` in a session of their own (inference's job threads, session 5);
* the same with that session's autogroup at nice 10, and at nice 19 (``FERRY_INFERENCE_NICENESS``'s
  mechanism; the job lane's, ``FERRY_INFERENCE_JOB_LANE_NICENESS``, 19 by default);
* spinners at ``SCHED_IDLE`` in the waker's own session;
* spinners at ``SCHED_IDLE`` in the machine's ``cpu.idle`` cgroup (``services.common.cpu_idle``,
  inference's job threads since session 8; needs root and a writable cgroup, else the row says so).

``--front-door`` runs other rows instead: the spinners at ``SCHED_OTHER`` in a session of their own,
in bursts of 4 ms of CPU with 0.5 ms waits between (a bulk job's normal-priority work: the jobs
runner, NATS; spinners that never wait leave a waking thread ahead of them anyway), the waker
with the kernel's time slice or the shortest (100 us, ``services.common.time_slice``:
``FERRY_GATEWAY_TIME_SLICE_US``, ``FERRY_ENVOY_TIME_SLICE_US``), in a session at autogroup nice 0
or -10 (``FERRY_ENVOY_NICENESS``, ``FERRY_GATEWAY_NICENESS``; root), sleeping 2 ms at a time, as a
front-door thread between calls.

Each row prints the lateness p50 / p90 / p99 / max and the 1-minute load average. Session 6 used
it to show that ``SCHED_IDLE`` ranks threads only inside their own scheduling group
(docs/benchmarks.md). Linux only (``SCHED_IDLE``, ``/proc/self/autogroup``); not a test: nothing
asserts, and on a shared machine other sessions' load moves every row.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from services.common import cpu_idle, time_slice

SLEEP_S = 0.02
ARRANGEMENTS: list[tuple[str, tuple[str, str] | None, bool]] = [
    ("no spinners", None, False),
    ("SCHED_OTHER, own session", ("other", "0"), False),
    ("SCHED_IDLE, own session", ("idle", "0"), False),
    ("SCHED_IDLE, own session at autogroup nice 10", ("idle", "10"), False),
    ("SCHED_IDLE, own session at autogroup nice 19", ("idle", "19"), False),
    ("SCHED_IDLE, the waker's session", ("idle", "0"), True),
    ("SCHED_IDLE, in the cpu.idle cgroup", ("idle-cgroup", "0"), False),
]

FRONT_DOOR_SLEEP_S = 0.002
FRONT_DOOR: list[tuple[str, int, int]] = [
    ("the kernel's slice, autogroup nice 0", 0, 0),
    ("a 100 us slice, autogroup nice 0", 100, 0),
    ("the kernel's slice, autogroup nice -10", 0, -10),
    ("a 100 us slice, autogroup nice -10", 100, -10),
]


def spin(policy: str, autogroup_nice: str) -> None:
    """Two busy processes (this one and a fork) at ``policy``, until killed."""
    if autogroup_nice != "0":
        Path("/proc/self/autogroup").write_text(autogroup_nice)
    if policy == "idle-cgroup" and not cpu_idle.join_process(os.getpid()):
        print("(no writable cpu.idle cgroup here: plain SCHED_IDLE) ", end="", flush=True)
    os.fork()  # both run the loop below: two cores' worth of demand (the fork stays in the group)
    if policy.startswith("idle"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while policy == "bursts":  # a bulk job's normal-priority work: 4 ms of CPU, a 0.5 ms wait
        until = time.perf_counter() + 0.004
        while time.perf_counter() < until:
            pass
        time.sleep(0.0005)
    while True:
        pass


def wake(seconds: float, sleep_s: float = SLEEP_S, slice_us: int = 0, autogroup_nice: int = 0) -> None:
    """Sleeps ``sleep_s`` at a time for ``seconds`` and prints how late the sleeps ended."""
    if autogroup_nice:
        os.setpriority(os.PRIO_PROCESS, 0, autogroup_nice)
        Path("/proc/self/autogroup").write_text(str(autogroup_nice))
    if slice_us and not time_slice.shorten(0, slice_us):
        print("(the kernel refused the slice) ", end="", flush=True)
    late = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.perf_counter()
        time.sleep(sleep_s)
        late.append((time.perf_counter() - started - sleep_s) * 1000)
    late.sort()

    def at(q: float) -> float:
        return late[min(len(late) - 1, int(len(late) * q))]

    print(f"p50 {at(0.5):.2f} / p90 {at(0.9):.2f} / p99 {at(0.99):.2f} / max {late[-1]:.2f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the waker runs per row")
    parser.add_argument("--rounds", type=int, default=1, help="times every row is run, in turn")
    parser.add_argument(
        "--front-door",
        action="store_true",
        help="the front door's rows: its time slice and autogroup nice beside SCHED_OTHER spinners",
    )
    parser.add_argument("--spin", nargs=2, help=argparse.SUPPRESS)  # internal: policy, autogroup nice
    parser.add_argument("--wake", nargs=2, type=int, help=argparse.SUPPRESS)  # internal: slice, nice
    args = parser.parse_args()
    if args.spin:
        spin(*args.spin)
    if args.wake:
        slice_us, nice = args.wake
        wake(args.seconds, FRONT_DOOR_SLEEP_S if slice_us or nice else SLEEP_S, slice_us, nice)
        return
    me = [sys.executable, "-m", "benchmarks.wake_latency", "--seconds", str(args.seconds)]
    if args.front_door:
        for _ in range(args.rounds):
            for label, slice_us, nice in FRONT_DOOR:
                front_door_row(me, label, slice_us, nice)
        return
    for _ in range(args.rounds):
        for label, spinners, same_session in ARRANGEMENTS:
            hog = None
            if spinners is not None:
                # A process group of their own either way, so that both spinners are killed together;
                # a session of their own (an autogroup) unless they share the waker's.
                hog = subprocess.Popen(
                    [*me, "--spin", *spinners],
                    start_new_session=not same_session,
                    process_group=0 if same_session else None,
                )
                time.sleep(0.5)
            load = Path("/proc/loadavg").read_text().split()[0]
            print(f"{label:<46} load {load}: ", end="", flush=True)
            try:
                subprocess.run([*me, "--wake", "0", "0"], start_new_session=not same_session, check=True)
            finally:
                if hog is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(hog.pid, 9)
                    hog.wait()


def front_door_row(me: list[str], label: str, slice_us: int, nice: int) -> None:
    """One ``--front-door`` row: SCHED_OTHER spinners in a session of their own, the waker in its own."""
    hog = subprocess.Popen([*me, "--spin", "bursts", "0"], start_new_session=True)
    time.sleep(0.5)
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"{label:<46} load {load}: ", end="", flush=True)
    try:
        # Its own session, hence its own autogroup, as ferry up starts Envoy and each gateway.
        subprocess.run([*me, "--wake", str(slice_us), str(nice)], start_new_session=True, check=True)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hog.pid, 9)
        hog.wait()


if __name__ == "__main__":
    main()
