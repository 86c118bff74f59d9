"""Batch work kept to some of the machine's cores (``sched_setaffinity``), so the others stay free
for the interactive path.

The job's compute already yields at once to any waking thread (``cpu_idle``), but a bulk job also
runs work at the normal priority: the jobs runner reading photos and sending them to inference,
inference taking those requests. Traced during the 200-photo job (``benchmarks.bulk
--sched-trace``), Envoy's and the gateway's threads waited for a core mostly behind that work,
while the other core ran the job's idle compute (docs/benchmarks.md, session 9). Kept to a core of
their own, the job's threads leave the other cores to the front door; the job then uses at most
those cores, even on an idle machine.

A spec names cores as Linux's ``cpuset`` lists do (``1``, ``2-3``, ``0,2``), or ``last`` (the
highest core this process may run on: a container's cpuset is respected); empty: no pinning. Only
cores this process may use count; a spec that leaves none is a configuration error.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def parse(spec: str, allowed: set[int] | None = None) -> set[int] | None:
    """The cores ``spec`` names among ``allowed`` (default: those this process may run on); None
    for an empty spec (no pinning).

    Raises:
        ValueError: the spec is malformed, or names none of the allowed cores.
    """
    spec = spec.strip()
    if not spec:
        return None
    allowed = set(os.sched_getaffinity(0)) if allowed is None else allowed
    if spec == "last":
        return {max(allowed)}
    cores: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{spec!r} is not a list of cores such as 1, 2-3 or 0,2 (or 'last')")
        cores |= set(range(int(first), int(last if dash else first) + 1))
    chosen = cores & allowed
    if not chosen:
        raise ValueError(f"{spec!r} names none of the cores this process may use ({sorted(allowed)})")
    return chosen


def pin_this_thread(cores: set[int] | None) -> None:
    """Keeps the calling thread (and the threads it starts later) to ``cores``; None: unchanged."""
    if cores is not None:
        os.sched_setaffinity(0, cores)


def pin_process(cores: set[int] | None) -> int:
    """Keeps every thread of this process (and those they start later) to ``cores``.

    Returns:
        How many threads were pinned (0 for None).
    """
    if cores is None:
        return 0
    pinned = 0
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        pinned += 1
    log.info("pinned this process's %d threads to cores %s", pinned, sorted(cores))
    return pinned
