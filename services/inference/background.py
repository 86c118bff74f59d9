"""Threads at the lowest CPU priority for batch jobs' inputs (``idle_job_items``).

A bulk job keeps inference's cores busy for its whole run: without this, its decodes and forward
passes hold a core for a whole time slice when Envoy or a gateway wakes up to answer another
tenant, and that tenant's call waits for the slice to end (docs/inference.md, *Batch jobs' CPU*).
A thread at ``SCHED_IDLE`` is preempted at once by any other thread that wakes on its core, and a
core that runs only such threads counts as free when the kernel places a waking one. Its share
of the CPU against other processes does not change (that is its process's or group's weight): only
who goes first on a wake-up.

Job inputs get a decode queue and a batcher of their own whose threads call these as they start:
an unprivileged process (a container without CAP_SYS_NICE, RLIMIT_NICE 0) may move a thread to
``SCHED_IDLE`` but never back (sched(7)), so no thread switches per batch; and in queues of their
own, a caller's input never waits behind a job's batch that only runs when the cores are free.
An OpenMP team that such a thread starts (torch's intra-op threads) inherits its policy.

``SCHED_IDLE`` ranks a thread only inside its own scheduling group (the process's autogroup or
container): so each such thread also joins the machine's ``cpu.idle`` cgroup where one can be
written (``services.common.cpu_idle``, ``job_cpu_idle``), which ranks it below every other group.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial

from services.common import cpu_idle, cpus
from services.common.cpu_idle import CpuIdle

log = logging.getLogger(__name__)


def lower_this_thread(group: CpuIdle = "auto", cores: set[int] | None = None) -> None:
    """Moves the calling thread to ``SCHED_IDLE`` (on Linux; elsewhere it logs and does nothing),
    unless ``group`` is ``off`` into the ``cpu.idle`` cgroup (``cpu_idle.join_this_thread``), and
    keeps it to ``cores`` when given (``job_cpus``: ``cpus.pin_this_thread``)."""
    cpus.pin_this_thread(cores)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as err:  # not Linux, or a kernel that refuses it
        log.warning("job items' threads run at the normal CPU priority: %s", err)
    cpu_idle.join_this_thread(group)


def lowering(group: CpuIdle, cores: set[int] | None = None) -> Callable[[], None]:
    """``lower_this_thread`` with ``group`` and ``cores`` bound: a batcher's per-thread initializer."""
    return partial(lower_this_thread, group, cores)


def idle_initializer(
    then: Callable[[], object] | None = None, group: CpuIdle = "auto", cores: set[int] | None = None
) -> Callable[[], None]:
    """A thread pool initializer that lowers its thread (``lower_this_thread``), then runs ``then``."""

    def initialize() -> None:
        lower_this_thread(group, cores)
        if then is not None:
            then()

    return initialize
