"""Every job ends: a job whose items make no progress for ``job_stall_timeout_s`` is failed.

Items can stop reaching the runners for reasons no runner sees: the job queue crashed between
recording the job and queueing its items (and the client never retried), or a work message was
lost to a misconfigured stream. Without this a job would stay QUEUED or RUNNING for good and a
client waiting on it would wait forever. Store owns the jobs' state, so it sweeps: every
``interval_s`` one UPDATE fails the jobs whose ``update_time`` (moved by every counted item) is
older than the timeout, with reason JOB_STALLED naming the setting.

A job that waits its turn is not stalled: while the work stream holds items (a backlog of other
jobs, or runners down for a while), no queued or running job is failed, since its items may be
among them and will run. Only once the stream has been empty for a whole check interval (so the
records of the last items it held have reached store) is a job without progress judged: its
items are in no queue, and nothing will finish it.

An EXPANDING job is swept the same way: its expansion reports every chunk of lines it reads
(``job_events.py`` moves ``update_time``), so a long expansion that progresses is never failed,
and one whose jobs service is gone (or whose request was lost) ends after the same timeout.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import grpc
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from services.common import messaging
from services.store.repositories import jobs
from services.store.retention import ROUND_FAILED

log = logging.getLogger(__name__)


def stalled_message(idle_s: float) -> str:
    """Job.error's message of a job failed as stalled."""
    return (
        f"no item of this job finished for {idle_s:g} s (FERRY_STORE_JOB_STALL_TIMEOUT_S), so it was "
        "failed rather than left waiting; items that still run later are recorded but do not reopen "
        "it; submit the job again"
    )


def stalled_expansion_message(idle_s: float) -> str:
    """Job.error's message of a job failed as stalled while its manifest was being expanded."""
    return (
        f"this job's manifest was not read any further for {idle_s:g} s "
        "(FERRY_STORE_JOB_STALL_TIMEOUT_S): no jobs service expanded it, so it was failed rather "
        "than left EXPANDING; items already queued are recorded but do not reopen it; submit the job again"
    )


class WorkQueue:
    """Says whether the work stream has been empty since the previous look (see the module's doc)."""

    def __init__(self, js: JetStreamContext, stream: str = messaging.WORK_STREAM) -> None:
        self._js = js
        self._stream = stream
        self._was_empty = False

    async def idle(self) -> bool:
        """True when the stream is empty now and was at the previous call; False when NATS cannot
        say (an outage is no time to decide that work is lost)."""
        try:
            info = await self._js.stream_info(self._stream)
        except (NatsError, TimeoutError) as err:
            log.warning("stalled jobs: cannot read the work stream (%r); judging only expansions", err)
            self._was_empty = False
            return False
        empty = info.state.messages == 0
        idle, self._was_empty = empty and self._was_empty, empty
        return idle


async def fail_stalled(pool: asyncpg.Pool, idle_s: float, queue_idle: bool = True) -> int:
    """Fails the jobs stalled for ``idle_s`` seconds now; returns how many. Without ``queue_idle``
    only expanding jobs are judged."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    async with pool.acquire() as connection, connection.transaction():
        failed = await jobs.fail_stalled(
            connection,
            idle_s,
            code,
            stalled_message(idle_s),
            stalled_expansion_message(idle_s),
            queue_idle,
        )
    for row in failed:
        log.warning(
            "job %s of tenant %r made no progress for %g s (%s): failed as stalled",
            row["id"],
            row["tenant"],
            idle_s,
            "still expanding"
            if row["expanding"]
            else f"{row['items_succeeded'] + row['items_failed']}/{row['items_total']} items finished",
        )
    return len(failed)


async def run_stall_sweeper(pool: asyncpg.Pool, queue: WorkQueue, idle_s: float, interval_s: float) -> None:
    """Fails stalled jobs every ``interval_s`` until cancelled; a failed round waits for the next."""
    while True:
        try:
            await fail_stalled(pool, idle_s, await queue.idle())
        except ROUND_FAILED as err:
            log.warning("stalled jobs: this round failed (%r); trying again in %.0f s", err, interval_s)
        await asyncio.sleep(interval_s)
