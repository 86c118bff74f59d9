"""WatchJob on a job that does not move (services/gateway/watch.py)."""

from __future__ import annotations

import asyncio

from ferry.jobs.v1 import job_pb2
from services.gateway.watch import watch_job


class _StillQueued:
    """Store's answer for a job whose one item is being retried: nothing changes."""

    def __init__(self) -> None:
        self.reads = 0

    async def get_job(self, tenant: str, name: str) -> job_pb2.Job:
        self.reads += 1
        return job_pb2.Job(name=name, state=job_pb2.JOB_STATE_QUEUED, items_total=1)


def test_a_job_that_does_not_move_is_answered_again_before_a_proxy_calls_the_stream_idle() -> None:
    # A job on a model that failed to load retried its item for 5 minutes without a change; Envoy
    # cancels a stream idle for 5 minutes (its stream_idle_timeout), so `ferry job --wait` ended
    # with "INTERNAL: Stream removed" just before the job failed. The watch now repeats the job
    # after keepalive_s of silence.
    async def updates() -> int:
        count = 0
        stream = watch_job(_StillQueued(), "t", "jobs/x", poll_s=0.01, max_s=0.35, keepalive_s=0.1)  # type: ignore[arg-type]
        async for update in stream:
            assert update.job.state == job_pb2.JOB_STATE_QUEUED
            count += 1
        return count

    assert asyncio.run(updates()) >= 3  # the first answer, then one per keepalive_s


def test_an_unchanged_job_is_not_repeated_within_keepalive() -> None:
    async def updates() -> int:
        stream = watch_job(_StillQueued(), "t", "jobs/x", poll_s=0.01, max_s=0.2, keepalive_s=60)  # type: ignore[arg-type]
        return len([u async for u in stream])

    assert asyncio.run(updates()) == 1
