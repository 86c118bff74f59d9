"""``benchmarks.sched_waits`` reads the kernel's scheduler events as tracefs writes them and blames
each of the other tenant's waits for a core on what ran there (``benchmarks.bulk --sched-trace``)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from benchmarks import sched_waits

GATEWAY, JOBS, INFERENCE = 100, 200, 300
"""Process ids (tgids) of the made-up trace: the gateway's thread 101 waits behind the runner's 201
on core 0 while inference's job thread 301 (``SCHED_IDLE``) runs on core 1."""


def line(tid: int, tgid: int, cpu: int, at: float, event: str) -> str:
    return f"          python-{tid}   (  {tgid}) [{cpu:03d}] d..2.   {at:.6f}: {event}"


def switch(cpu: int, at: float, prev: int, state: str, nxt: int, tgid: int) -> str:
    return line(
        prev,
        tgid,
        cpu,
        at,
        f"sched_switch: prev_comm=python prev_pid={prev} prev_prio=120 prev_state={state} ==> "
        f"next_comm=python next_pid={nxt} next_prio=120",
    )


def wakeup(cpu: int, at: float, waker: int, waker_tgid: int, woken: int) -> str:
    event = f"sched_wakeup: comm=python pid={woken} prio=120 target_cpu={cpu:03d}"
    return line(waker, waker_tgid, cpu, at, event)


TRACE = [
    switch(0, 1.000, 101, "S", 201, GATEWAY),  # the gateway sleeps, the runner runs on core 0
    switch(1, 1.000, 0, "R", 301, 0),  # the job's compute on core 1
    wakeup(0, 1.001, 201, JOBS, 101),  # a call arrives: the gateway wakes onto core 0 ...
    switch(0, 1.005, 201, "R", 101, JOBS),  # ... and gets it 4 ms later, preempting the runner
    wakeup(1, 1.006, 201, JOBS, 102),  # another gateway thread wakes onto the job's core ...
    switch(1, 1.00601, 301, "R", 102, INFERENCE),  # ... and takes it over at once
    switch(1, 1.008, 102, "S", 301, GATEWAY),
    switch(0, 1.010, 101, "S", 0, GATEWAY),
]
NAMES = {101: "gateway", 102: "gateway", 201: "jobs", 301: "inference SCHED_IDLE"}


def test_a_wait_is_blamed_on_what_held_its_core() -> None:
    trace = sched_waits.parse(TRACE)

    found = sched_waits.waits(trace, {GATEWAY})
    text = sched_waits.report(trace, NAMES, {GATEWAY})

    assert [(w.tid, round(w.seconds * 1000, 2), w.cpu, w.ran_on_wake, w.took_over) for w in found] == [
        (101, 4.0, 0, 201, True),
        (102, 0.01, 1, 301, True),
    ]
    assert "4 ms in 1 waits of 2 ms or more (gateway 4 ms)" in text
    assert "the core it waited on ran: jobs 100%" in text
    assert "the other core(s): inference SCHED_IDLE 100%" in text
    assert "took it over in p50 0.010, p99 0.010, max 0.01 ms (1 times)" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="tracefs needs root")
def test_a_live_trace_sees_a_thread_of_this_process_wake() -> None:
    tracer = sched_waits.SchedTrace(buffer_kb=4096)
    tracer.start()
    if tracer.why_not:
        pytest.skip(tracer.why_not)
    seen: list[int] = []
    sleeper = threading.Thread(target=lambda: (time.sleep(0.05), seen.append(threading.get_native_id())))
    sleeper.start()
    sleeper.join()
    tracer.stop()

    found = sched_waits.waits(sched_waits.parse(tracer.lines), {os.getpid()})

    assert seen[0] in {w.tid for w in found}
    assert not (sched_waits.TRACEFS / "instances" / f"ferry-bench-{os.getpid()}").exists()


def test_a_thread_moved_while_it_waits_is_blamed_on_each_core_in_turn() -> None:
    moved = "sched_migrate_task: comm=python pid=101 prio=120 orig_cpu=0 dest_cpu=1"
    trace = sched_waits.parse(
        [
            switch(0, 2.000, 0, "R", 201, 0),  # the runner on core 0, NATS on core 1
            switch(1, 2.000, 0, "R", 202, 0),
            wakeup(0, 2.001, 201, JOBS, 101),  # the gateway wakes onto core 0 ...
            line(201, JOBS, 0, 2.003, moved),  # ... is moved to core 1 after 2 ms ...
            switch(1, 2.005, 202, "S", 101, JOBS),  # ... and runs there 2 ms later
            switch(1, 2.006, 101, "S", 0, GATEWAY),
        ]
    )

    text = sched_waits.report(trace, {101: "gateway", 201: "jobs", 202: "nats"}, {GATEWAY})

    assert "4 ms in 1 waits" in text
    assert "the core it waited on ran: jobs 50%, nats 50%" in text
    assert "the other core(s): nats 50%, jobs 50%" in text


def test_the_slowest_calls_count_only_the_waits_within_them() -> None:
    trace = sched_waits.parse(TRACE)
    # A call from 1.003 to 1.0095: half of the gateway's 4 ms wait (1.001-1.005) falls in it, and
    # the 0.01 ms one at 1.006; a quicker call earlier is not among the slowest.
    calls = [(1.0, 1.0008), (1.003, 1.0095)]

    text = sched_waits.slow_calls(trace, NAMES, {GATEWAY}, calls, share=0.5)

    assert "the slowest 1 of the other tenant's 2 calls in the trace" in text
    assert "6.5 ms (2.0 waiting)" in text
    assert "behind: jobs 100%" in text


def test_a_thread_outside_the_stack_is_named_by_its_command_without_its_core_number() -> None:
    softirq = line(
        0,
        0,
        0,
        3.000,
        "sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> "
        "next_comm=ksoftirqd/0 next_pid=15 next_prio=120",
    )
    trace = sched_waits.parse(
        [
            softirq,  # the kernel's softirq thread holds core 0 ...
            switch(1, 3.000, 0, "R", 301, 0),
            wakeup(0, 3.001, 15, 0, 101),  # ... when the gateway wakes onto it
            switch(0, 3.004, 15, "S", 101, 0),
            switch(0, 3.005, 101, "S", 0, GATEWAY),
        ]
    )

    text = sched_waits.report(trace, NAMES, {GATEWAY})

    assert "3 ms in 1 waits" in text
    assert "the core it waited on ran: other ksoftirqd 100%" in text
