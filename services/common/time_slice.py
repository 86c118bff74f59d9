"""Short scheduler time slices for latency-bound threads (Linux 6.12 and later).

Since Linux 6.6 the fair scheduler is EEVDF: a running thread keeps its core until it has used its
time slice (``sched_base_slice``, 0.7-3 ms with the core count), and a thread that wakes meanwhile
waits for that, then for the next scheduler tick (4 ms at HZ 250) unless it asked for a shorter
slice than the running one (``sched_setattr``'s ``sched_runtime`` for ``SCHED_OTHER``, 0.1-100 ms;
the kernel's ``PREEMPT_SHORT``): then it takes the core as it wakes. The front door's threads
(Envoy, the callers' gateways) each run a few microseconds to a millisecond per call and sleep, so
a short slice costs them nothing and spares each call waiting behind a busy job's burst.
Threads and children inherit the slice from the thread that starts them.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import struct
from pathlib import Path

_SCHED_SETATTR, _SCHED_GETATTR = {"x86_64": (314, 315), "aarch64": (274, 275)}.get(
    platform.machine(), (None, None)
)
# struct sched_attr, SCHED_ATTR_SIZE_VER1: size, policy, flags, nice, priority, runtime, deadline,
# period, util_min, util_max.
_ATTR = struct.Struct("IIQiIQQQII")
_LIBC = ctypes.CDLL(None, use_errno=True)
MAX_SLICE_US = 100_000
"""The kernel's ceiling for a custom slice (its floor is 100 us: it clamps shorter ones up)."""
FRONT_DOOR_SLICE_US = 100
"""The front door's slice: the kernel's shortest. Envoy and a gateway thread run a few
microseconds to a millisecond per wake-up (docs/benchmarks.md, session 10)."""


def shorten(tid: int, slice_us: int) -> bool:
    """Gives thread ``tid`` (0: the calling thread) a time slice of ``slice_us``, keeping its
    policy and nice. Returns whether the kernel took the call (False on an architecture this module
    does not know or for a thread that is gone; kernels before 6.12 take it and keep their own
    slice, which ``current_us`` then reports as 0)."""
    attr = _attr(tid)
    if _SCHED_SETATTR is None or attr is None:
        return False
    size, policy, flags, nice, priority, _, *rest = _ATTR.unpack(attr.raw)
    changed = _ATTR.pack(size, policy, flags, nice, priority, slice_us * 1000, *rest)
    return bool(_LIBC.syscall(_SCHED_SETATTR, tid, ctypes.create_string_buffer(changed), 0) == 0)


def shorten_process(pid: int, slice_us: int) -> int:
    """Gives every thread of process ``pid`` a time slice of ``slice_us``; returns how many took
    it. Threads it starts later inherit it from theirs."""
    shortened = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            shortened += shorten(int(task.name), slice_us)
    return shortened


def current_us(tid: int) -> int | None:
    """Thread ``tid``'s time slice in microseconds (0: the calling thread), or None where the
    kernel does not say (before Linux 6.12 it reports 0)."""
    attr = _attr(tid)
    return None if attr is None else _ATTR.unpack(attr.raw)[5] // 1000


def _attr(tid: int) -> ctypes.Array[ctypes.c_char] | None:
    """Thread ``tid``'s ``struct sched_attr``, or None where it cannot be read."""
    if _SCHED_GETATTR is None:
        return None
    attr = ctypes.create_string_buffer(_ATTR.size)
    return attr if _LIBC.syscall(_SCHED_GETATTR, tid, attr, _ATTR.size, 0) == 0 else None
