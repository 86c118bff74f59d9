"""CPU seconds used by processes (and their children) over a stretch of a benchmark.

Says where a request's time goes when several processes serve it: divided by the requests of a
row, each process's CPU is its cost per request (Linux ``/proc``; elsewhere nothing is counted).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process plus its live children (Postgres's backends)."""
    parents: dict[int, list[int]] = defaultdict(list)
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").exists() else ():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            parents[found[0]].append(int(entry.name))
            used[int(entry.name)] = found[1]
    return {name: used.get(pid, 0.0) + sum(used[c] for c in parents[pid]) for name, pid in pids.items()}


def own_cpu_seconds() -> float:
    """CPU seconds of this process alone (its threads; not its children)."""
    times = os.times()
    return times.user + times.system


def per_request_ms(before: Mapping[str, float], after: Mapping[str, float], requests: int) -> str:
    """``name 12.3`` for each process, the CPU milliseconds it spent per request, most first."""
    spent = {name: (after.get(name, 0.0) - before.get(name, 0.0)) * 1000 / requests for name in before}
    return ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]))
