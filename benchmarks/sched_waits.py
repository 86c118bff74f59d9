"""Where another tenant's calls wait for a core: the kernel's scheduler events, attributed.

``benchmarks.bulk --sched-trace`` records the kernel's ``sched_switch`` and ``sched_wakeup`` events
(tracefs, an instance of its own, so another user's tracing is untouched) while the photos job
runs, then follows every thread of the other tenant's path (its client, Envoy, the gateway): from
each wake-up to the moment it got a core is a *wait*, and during the waits of 2 ms and more it
counts which process ran on the core the thread waited for, and on the other cores. Inference's
job threads (``SCHED_IDLE``, in the ``cpu.idle`` group) count apart from its other threads. It also
says how fast a wake-up onto a core that ran only such a job thread took that core over: a
slow one there would be kernel time the job cannot be preempted in (``CONFIG_PREEMPT_NONE``).

Linux, root, and tracefs (mounted here if it is not). Not a test: nothing asserts; the figures
are one run's, on whatever else the machine ran meanwhile (the *other* row).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("sched/sched_switch", "sched/sched_wakeup", "sched/sched_migrate_task")
LONG_S = 0.002
"""A wait this long or longer is one the report takes apart."""
JOB_THREADS = "SCHED_IDLE"
"""The suffix of a process's name for its threads at ``SCHED_IDLE`` (inference's job threads)."""

_LINE = re.compile(r"^\s*(.+?)-(\d+)\s+\(\s*([\d-]+)\)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+):\s+(.*)$")
_SWITCH = re.compile(r"prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+) ")
_INSTANCE = re.compile(r"[/:-]?\d+(:\d+)?$")  # kworker/1:2, ksoftirqd/0, migration/1
_WAKEUP = re.compile(r" pid=(\d+) prio=\d+ target_cpu=(\d+)")
_MIGRATE = re.compile(r" pid=(\d+) prio=\d+ orig_cpu=\d+ dest_cpu=(\d+)")


@dataclass(frozen=True)
class Event:
    """One ``sched_switch`` (``tid`` = the next thread, ``prev`` the one it replaced),
    ``sched_wakeup`` (``tid`` = the woken thread, ``cpu`` its target) or ``sched_migrate_task``
    (``tid`` moved to ``cpu``) line."""

    at: float
    cpu: int
    kind: str
    tid: int
    prev: int = 0
    prev_runnable: bool = False
    """A switch's previous thread was still runnable: it was preempted, it did not sleep."""


@dataclass
class Trace:
    """Parsed events and the thread -> process map the trace carried (``record-tgid``)."""

    events: list[Event] = field(default_factory=list)
    tgids: dict[int, int] = field(default_factory=dict)
    comms: dict[int, str] = field(default_factory=dict)
    """Thread id -> its command as the switches named it, without a per-core number (``kworker``)."""

    def name(self, tid: int, names: dict[int, str]) -> str:
        """``names``' name for ``tid``, else ``idle`` or ``other <command>`` (the rest of the machine:
        kernel threads such as ``ksoftirqd``, a tracer, another user's processes)."""
        if tid in names:
            return names[tid]
        return "idle" if tid == 0 else f"other {self.comms.get(tid, '?')}"


def parse(lines: list[str]) -> Trace:
    """The switches and wake-ups of a tracefs ``trace`` text with ``record-tgid`` on."""
    trace = Trace()
    for line in lines:
        found = _LINE.match(line)
        if found is None:
            continue
        _, tid, tgid, cpu, at, kind, rest = found.groups()
        if tgid.strip("-"):
            trace.tgids[int(tid)] = int(tgid)
        if kind == "sched_switch" and (switch := _SWITCH.search(rest)):
            prev, state, comm, nxt = switch.groups()
            trace.comms.setdefault(int(nxt), _INSTANCE.sub("", comm) or comm)
            trace.events.append(Event(float(at), int(cpu), kind, int(nxt), int(prev), state.startswith("R")))
        elif kind == "sched_wakeup" and (wakeup := _WAKEUP.search(rest)):
            trace.events.append(Event(float(at), int(wakeup.group(2)), kind, int(wakeup.group(1))))
        elif kind == "sched_migrate_task" and (moved := _MIGRATE.search(rest)):
            trace.events.append(Event(float(at), int(moved.group(2)), kind, int(moved.group(1))))
    return trace


@dataclass(frozen=True)
class Wait:
    """A thread of the path, from its wake-up (``at``) until it ran, on ``cpu``."""

    tid: int
    at: float
    seconds: float
    cpu: int
    ran_on_wake: int
    """The thread running on the core it was woken onto when it woke (0: the core was idle)."""
    took_over: bool
    """It replaced that very thread on that core, still runnable (a preemption, not a sleep)."""
    queued: tuple[tuple[float, int], ...] = ()
    """(since when, on which core) it waited: the core it was woken onto, then any it was moved to."""


def waits(trace: Trace, path: set[int]) -> list[Wait]:
    """Every wait of a thread of the processes ``path`` (tgids) for a core."""
    running: dict[int, int] = {}
    pending: dict[int, tuple[float, int, int]] = {}
    found = []
    moves: dict[int, list[tuple[float, int]]] = {}
    for event in trace.events:
        if event.kind == "sched_wakeup":
            woken = event.tid
            if trace.tgids.get(woken) in path and woken not in pending and woken not in running.values():
                pending[woken] = (event.at, event.cpu, running.get(event.cpu, 0))
                moves[woken] = [(event.at, event.cpu)]
            continue
        if event.kind == "sched_migrate_task":
            if event.tid in pending:
                moves[event.tid].append((event.at, event.cpu))
            continue
        pending.pop(event.prev, None)  # it ran meanwhile (a wake-up of a running thread)
        running[event.cpu] = event.tid
        if event.tid in pending:
            at, target, ran = pending.pop(event.tid)
            took_over = event.prev == ran and event.prev_runnable and target == event.cpu
            queued = tuple(moves.pop(event.tid))
            found.append(Wait(event.tid, at, event.at - at, event.cpu, ran, took_over, queued))
    return found


class Occupancy:
    """Who ran on each core when: ``shares`` of a window by process."""

    def __init__(self, trace: Trace) -> None:
        self._trace = trace
        self._runs: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
        since: dict[int, tuple[float, int]] = {}
        for event in trace.events:
            if event.kind != "sched_switch":
                continue
            if event.cpu in since:
                start, tid = since[event.cpu]
                self._runs[event.cpu].append((start, event.at, tid))
            since[event.cpu] = (event.at, event.tid)
        end = trace.events[-1].at if trace.events else 0.0
        for cpu, (start, tid) in since.items():  # what still ran when the trace stopped
            self._runs[cpu].append((start, end, tid))
        self._starts = {cpu: [start for start, _, _ in runs] for cpu, runs in self._runs.items()}

    def add(self, cpu: int, start: float, end: float, name_of: dict[int, str], into: Counter[str]) -> None:
        """Adds to ``into`` each process's seconds on ``cpu`` between ``start`` and ``end``."""
        runs = self._runs.get(cpu, [])
        i = max(0, bisect.bisect_right(self._starts.get(cpu, []), start) - 1)
        while i < len(runs) and runs[i][0] < end:
            began, ended, tid = runs[i]
            overlap = min(ended, end) - max(began, start)
            if overlap > 0:
                into[self._trace.name(tid, name_of)] += overlap
            i += 1

    @property
    def cpus(self) -> list[int]:
        return sorted(self._runs)


def _shares(counter: Counter[str], total: float, top: int = 8) -> str:
    return ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in counter.most_common(top))


def _spread_ms(values: list[float]) -> str:
    values = sorted(values)
    if not values:
        return "none"
    pick = [values[min(len(values) - 1, int(len(values) * q))] * 1000 for q in (0.5, 0.99)]
    return f"p50 {pick[0]:.3f}, p99 {pick[1]:.3f}, max {values[-1] * 1000:.2f} ms"


def report(trace: Trace, names: dict[int, str], path: set[int]) -> str:
    """What the path's threads waited for a core behind, as text.

    Args:
        trace: the parsed events.
        names: thread id -> its process's name (job threads as ``<process> SCHED_IDLE``); a
            thread missing here is ``other <command>`` (the rest of the machine).
        path: the tgids of the other tenant's path (its client, Envoy, the gateways).
    """
    found = waits(trace, path)
    if not found or not trace.events:
        return "  sched trace: no waits of the other tenant's path recorded"
    window = trace.events[-1].at - trace.events[0].at
    occupancy = Occupancy(trace)
    long = [w for w in found if w.seconds >= LONG_S]
    own, others = Counter[str](), Counter[str]()
    for w in long:
        ends = [since for since, _ in w.queued[1:]] + [w.at + w.seconds]
        for (since, cpu), until in zip(w.queued or ((w.at, w.cpu),), ends, strict=True):
            occupancy.add(cpu, since, until, names, own)
            for other in occupancy.cpus:
                if other != cpu:
                    occupancy.add(other, since, until, names, others)
    long_s = sum(w.seconds for w in long) or 1e-9
    by_waiter = Counter[str]()
    for w in long:
        by_waiter[trace.name(w.tid, names)] += w.seconds
    job_cores = [
        w.seconds for w in found if w.took_over and names.get(w.ran_on_wake, "").endswith(JOB_THREADS)
    ]
    total_s = sum(w.seconds for w in found)
    return "\n".join(
        [
            f"  sched trace over {window:.1f} s: the other tenant's path woke {len(found)} times and "
            f"waited {total_s * 1000:.0f} ms for a core in all, {long_s * 1000:.0f} ms in {len(long)} "
            f"waits of {LONG_S * 1000:g} ms or more ("
            + ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in by_waiter.most_common())
            + ")",
            f"    during those, the core it waited on ran: {_shares(own, long_s)}",
            f"    and the other core(s): {_shares(others, long_s * max(1, len(occupancy.cpus) - 1))}",
            f"    a wake-up onto a core running a {JOB_THREADS} job thread took it over in "
            f"{_spread_ms(job_cores)} ({len(job_cores)} times)",
        ]
    )


def slow_calls(
    trace: Trace, names: dict[int, str], path: set[int], calls: list[tuple[float, float]], share: float = 0.01
) -> str:
    """What the slowest ``share`` of the other tenant's calls were made of, as text: of each such
    call's time (``calls``: (start, end) on the trace's clock, CLOCK_MONOTONIC), how much a thread
    of the path waited for a core meanwhile (its waits that overlap the call, clipped to it; the
    path's threads also serve other calls, so this bounds the call's own waits from above), and
    what the cores it waited on ran then. The rest of a call's time its path was running, or
    blocked on something other than a core (the interpreter lock, a lock, the network)."""
    if not trace.events:
        return ""
    first, last = trace.events[0].at, trace.events[-1].at
    inside = sorted((end - start, start, end) for start, end in calls if first <= start and end <= last)
    if not inside:
        return "  slowest calls: none inside the trace"
    slowest = inside[-max(1, round(len(inside) * share)) :]
    found = waits(trace, path)
    occupancy = Occupancy(trace)
    held = Counter[str]()
    parts = []
    for took, start, end in slowest:
        waited = 0.0
        for w in found:
            ends = [since for since, _ in w.queued[1:]] + [w.at + w.seconds]
            for (since, cpu), until in zip(w.queued or ((w.at, w.cpu),), ends, strict=True):
                overlap = min(until, end) - max(since, start)
                if overlap > 0:
                    waited += overlap
                    occupancy.add(cpu, max(since, start), min(until, end), names, held)
        parts.append(f"{took * 1000:.1f} ms ({min(waited, took) * 1000:.1f} waiting)")
    total = sum(held.values()) or 1e-9
    return (
        f"  the slowest {len(slowest)} of the other tenant's {len(inside)} calls in the trace, each "
        f"with its path's waits for a core meanwhile: {', '.join(reversed(parts))}; those waits were "
        f"behind: {_shares(held, total)}"
    )


def thread_names(pids: dict[str, int]) -> dict[int, str]:
    """Thread id -> process name for every thread of ``pids`` now, ``SCHED_IDLE`` ones apart."""
    names = {}
    for name, pid in pids.items():
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                policy = (task / "stat").read_text().rsplit(")", 1)[1].split()[38]
                idle = policy == str(os.SCHED_IDLE)
                names[int(task.name)] = f"{name} {JOB_THREADS}" if idle else name
    return names


class SchedTrace:
    """Records ``sched_switch`` and ``sched_wakeup`` in a tracefs instance of its own between
    ``start`` and ``stop``; ``lines`` holds the text once stopped. Where tracing is not possible
    (not root, no tracefs) ``why_not`` says so and nothing is recorded."""

    def __init__(self, buffer_kb: int = 131072) -> None:
        self._dir = TRACEFS / "instances" / f"ferry-bench-{os.getpid()}"
        self._buffer_kb = buffer_kb
        self.lines: list[str] = []
        self.why_not = ""

    def _write(self, name: str, value: str) -> None:
        (self._dir / name).write_text(value)

    def start(self) -> None:
        try:
            if not (TRACEFS / "instances").exists():
                subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)
            self._dir.mkdir(exist_ok=True)
            self._write("buffer_size_kb", str(self._buffer_kb))
            self._write("options/record-tgid", "1")
            self._write("trace_clock", "mono")  # the clock time.monotonic() reads: calls line up
            for event in EVENTS:
                self._write(f"events/{event}/enable", "1")
            self._write("tracing_on", "1")
        except (OSError, subprocess.CalledProcessError) as err:
            self.why_not = f"no sched trace: {err}"

    def stop(self) -> None:
        if self.why_not:
            return
        try:
            self._write("tracing_on", "0")
            self.lines = (self._dir / "trace").read_text().splitlines()
        finally:
            with contextlib.suppress(OSError):
                self._dir.rmdir()  # the kernel frees the instance's buffers with it
