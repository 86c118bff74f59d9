"""Threads named in the kernel as in Python, so that ``/proc/<pid>/task/*/comm``, ``top -H`` and
``perf`` tell a service's threads apart without a Python profiler.

Python (before 3.14) leaves every thread it starts named after the process (``python``), so
``python -m benchmarks.cpu`` could split inference's CPU by role only where py-spy was installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import threading
from collections.abc import Callable

#: prctl's option that names the calling thread (linux/prctl.h).
_PR_SET_NAME = 15
#: The kernel keeps 15 bytes of a thread's name (16 with the terminating zero).
_NAME_BYTES = 15


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def name_os_thread(name: str | None = None) -> None:
    """Names the calling thread in the kernel: ``name``, or its Python name, cut to 15 bytes.

    Threads the calling thread starts afterwards inherit the name (OpenMP's workers of a batch
    thread's team, for one). Does nothing where the kernel offers no names.
    """
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_NAME, (name or threading.current_thread().name).encode()[:_NAME_BYTES], 0, 0, 0)


def named(initializer: Callable[[], object] | None) -> Callable[[], None]:
    """A thread pool's initializer that first names the thread in the kernel (``name_os_thread``)."""

    def start() -> None:
        name_os_thread()
        if initializer is not None:
            initializer()

    return start
