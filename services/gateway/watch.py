"""Following a job for WatchJob: read it from store, answer each change, end when the job does.

Store already holds every job's progress (its ingest moves the counters as records land), so the
gateway polls it rather than keeping a second source of truth: a watch survives a gateway restart
by being opened again, and costs one indexed read per poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from ferry.jobs.v1 import job_pb2, job_service_pb2
from services.common.job_states import FINISHED
from services.gateway.records import Records


def _progress(job: job_pb2.Job) -> tuple[int, int, int, int]:
    return (job.state, job.items_succeeded, job.items_failed, job.retry_count)


async def watch_job(
    records: Records, tenant: str, name: str, poll_s: float, max_s: float, keepalive_s: float
) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
    """Yields the job ``name`` of ``tenant`` now, then on every change, until it finishes.

    The pace is measured from the items that finished while watching; a watch ends after
    ``max_s`` even when the job has not (a client watches again). A job that does not change for
    ``keepalive_s`` is yielded again: proxies cut a stream idle for long (Envoy's
    stream_idle_timeout, 5 minutes), and an item retried for minutes changes nothing.

    Raises:
        FerryError: an unknown job (NOT_FOUND), a bad name, or store unavailable.
    """
    began = time.monotonic()
    first: tuple[float, int] | None = None
    last: tuple[int, int, int, int] | None = None
    answered = began
    while True:
        job = await records.get_job(tenant, name)
        now = time.monotonic()
        done = job.items_succeeded + job.items_failed
        if first is None:
            first = (now, done)
        if _progress(job) != last or now - answered >= keepalive_s:
            last, answered = _progress(job), now
            elapsed, finished_since = now - first[0], done - first[1]
            pace = finished_since / elapsed if elapsed > 0 and finished_since > 0 else 0.0
            left = job.items_total - done
            # EXPANDING: items_total is not known yet (0 until the manifest is read), so no ETA.
            unknown = job.state in FINISHED or job.state == job_pb2.JOB_STATE_EXPANDING
            eta = left / pace if pace > 0 and not unknown else 0.0
            yield job_service_pb2.WatchJobResponse(job=job, items_per_second=pace, eta_seconds=eta)
        if job.state in FINISHED or now - began >= max_s:
            return
        await asyncio.sleep(poll_s)
