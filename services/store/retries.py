"""RetryJob's rules: which jobs may run their failed items again, and what a second call does.

A retry round marks a finished job's failed item rows ``retry_pending`` with the round's
generation and uncounts them; their re-run records (of that generation) replace the rows as ingest
writes them, and count them again. Asking again while a round is under way hands out the items
still pending in it and marks nothing, so a client retrying RetryJob itself re-queues no item twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from ferry.jobs.v1 import job_pb2
from services.common.errors import FailedPrecondition
from services.store.repositories import Connection, jobs, predictions

_UNFINISHED = (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)


@dataclass(frozen=True)
class Retry:
    """The outcome of RetryJob."""

    job: asyncpg.Record
    """The job's row after the call."""
    item_indexes: list[int]
    """The items pending a retry of ``generation``, in order (empty when none had failed)."""
    generation: int
    """The retry round of those items: the job's retry_count."""


async def retry_job(connection: Connection, tenant: str, job_id: uuid.UUID) -> Retry | None:
    """Opens a retry round for a finished job's failed items; None when the job is unknown.

    Runs in the caller's transaction, holding the job's lock, so concurrent calls take turns.

    Raises:
        FailedPrecondition: the job is cancelled, or still running without a retry pending.
    """
    job = await jobs.lock(connection, tenant, job_id)
    if job is None:
        return None
    name = f"jobs/{job_id}"
    if job["state"] == job_pb2.JOB_STATE_CANCELLED:
        raise FailedPrecondition(
            "cancelled jobs cannot be retried", reason="JOB_CANCELLED", metadata={"name": name}
        )
    pending = await predictions.pending_retry(connection, tenant, job_id)
    if pending:  # a round is under way: the same items and generation again, nothing new marked
        return Retry(job, pending, job["retry_count"])
    if job["state"] in _UNFINISHED:
        raise FailedPrecondition(
            f"job {name} is still running; retry its failed items once it has finished",
            reason="JOB_NOT_FINISHED",
            metadata={"name": name},
        )
    generation = job["retry_count"] + 1
    indexes = await predictions.mark_failed_for_retry(connection, tenant, job_id, generation)
    if not indexes:  # nothing failed: nothing to run, and no round is opened
        return Retry(job, [], job["retry_count"])
    return Retry(await jobs.start_retry(connection, tenant, job_id, len(indexes)), indexes, generation)
