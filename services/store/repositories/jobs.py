"""SQL for jobs and their progress."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ferry.jobs.v1 import job_pb2
from services.store.repositories import Connection

_QUEUED = job_pb2.JOB_STATE_QUEUED
_RUNNING = job_pb2.JOB_STATE_RUNNING
_SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
_FAILED = job_pb2.JOB_STATE_FAILED
_CANCELLED = job_pb2.JOB_STATE_CANCELLED
_PARTIALLY_SUCCEEDED = job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED
# A notebook job whose cell failed fails whole: the cells before it are not partial results.
_FAILS_WHOLE = "NOTEBOOK_CELL_FAILED"
#: The reason of a job failed for making no progress (``fail_stalled``).
STALLED = "JOB_STALLED"
# A job failed as stalled keeps that state and error: items that still run later are counted,
# but do not reopen it (its caller was told it failed, and may have submitted it again).
_IS_STALLED = f"(state = {_FAILED} AND last_error_reason = '{STALLED}')"


async def create(
    connection: Connection,
    job_id: uuid.UUID,
    tenant: str,
    job: job_pb2.Job,
) -> tuple[asyncpg.Record, bool]:
    """Inserts a queued job unless its id exists; returns (the row, whether it was inserted)."""
    row = await connection.fetchrow(
        "INSERT INTO jobs (id, tenant, request_id, model, state, items_total, top_k, trace_id, priority)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING *",
        job_id,
        tenant,
        job.request_id,
        job.model.removeprefix("models/"),
        _QUEUED,
        job.items_total,
        job.top_k,
        job.trace_id,
        job.priority,
    )
    if row is not None:
        return row, True
    existing = await get(connection, tenant, job_id)
    if existing is None:  # the id belongs to another tenant: ids are never shared, so refuse
        raise LookupError(f"job {job_id} exists for another tenant")
    return existing, False


async def get(connection: Connection, tenant: str, job_id: uuid.UUID) -> asyncpg.Record | None:
    """One job of ``tenant``, or None."""
    return await connection.fetchrow("SELECT * FROM jobs WHERE id = $1 AND tenant = $2", job_id, tenant)


async def cancel(connection: Connection, tenant: str, job_id: uuid.UUID) -> asyncpg.Record | None:
    """Moves an unfinished job to CANCELLED; returns the job (unchanged if it had finished)."""
    row = await connection.fetchrow(
        "UPDATE jobs SET state = $3, update_time = now()"
        " WHERE id = $1 AND tenant = $2 AND state IN ($4, $5) RETURNING *",
        job_id,
        tenant,
        _CANCELLED,
        _QUEUED,
        _RUNNING,
    )
    return row if row is not None else await get(connection, tenant, job_id)


@dataclass(frozen=True)
class Progress:
    """Items of one job that a transaction newly recorded (or re-recorded after a retry)."""

    tenant: str
    job_id: uuid.UUID
    succeeded: int
    failed: int
    error_code: int | None = None
    """The google.rpc code of one of the failed items (the job's error reports it)."""
    error_reason: str | None = None
    """That item's ErrorInfo reason."""
    error_message: str | None = None
    """That item's error message."""


async def count_finished_items(connection: Connection, progress: Sequence[Progress]) -> None:
    """Adds newly recorded items to their jobs' counters and moves each job's state.

    A record only moves a job of its own tenant. CANCELLED stays CANCELLED; any other job is
    RUNNING until every item is counted, then SUCCEEDED (none failed), FAILED (none succeeded, or a
    notebook cell failed: NOTEBOOK_CELL_FAILED) or PARTIALLY_SUCCEEDED. A job finished before is
    judged again: RetryJob moves counts back.

    Args:
        connection: where to write (inside the transaction that wrote the items).
        progress: one entry per job; sorted by the caller so that replicas lock jobs in one order.
    """
    await connection.execute(
        f"""
        UPDATE jobs SET
            items_succeeded = items_succeeded + d.ok,
            items_failed = items_failed + d.bad,
            state = CASE
                WHEN state = {_CANCELLED} OR {_IS_STALLED} THEN state
                WHEN items_succeeded + d.ok + items_failed + d.bad < items_total THEN {_RUNNING}
                WHEN items_failed + d.bad = 0 THEN {_SUCCEEDED}
                WHEN items_succeeded + d.ok = 0 THEN {_FAILED}
                WHEN COALESCE(CASE WHEN d.bad > 0 THEN d.reason END, last_error_reason) = '{_FAILS_WHOLE}'
                    THEN {_FAILED}
                ELSE {_PARTIALLY_SUCCEEDED}
            END,
            last_error_code = CASE WHEN d.bad > 0 AND NOT {_IS_STALLED} THEN d.code ELSE last_error_code END,
            last_error_reason = CASE WHEN d.bad > 0 AND NOT {_IS_STALLED} THEN d.reason
                ELSE last_error_reason END,
            last_error_message = CASE WHEN d.bad > 0 AND NOT {_IS_STALLED} THEN d.message
                ELSE last_error_message END,
            update_time = now()
        FROM unnest($1::text[], $2::uuid[], $3::integer[], $4::integer[], $5::integer[], $6::text[],
                    $7::text[]) AS d(tenant, id, ok, bad, code, reason, message)
        WHERE jobs.id = d.id AND jobs.tenant = d.tenant
        """,
        [p.tenant for p in progress],
        [p.job_id for p in progress],
        [p.succeeded for p in progress],
        [p.failed for p in progress],
        [p.error_code for p in progress],
        [p.error_reason for p in progress],
        [p.error_message for p in progress],
    )


async def fail_stalled(
    connection: Connection, idle_s: float, code: int, message: str
) -> list[asyncpg.Record]:
    """Fails every queued or running job none of whose items finished for ``idle_s`` seconds.

    "Finished" is what moves ``update_time``: a job's creation, an item counted, a retry. Returns
    the failed jobs (id, tenant, counters), for the log.
    """
    return await connection.fetch(
        f"""
        UPDATE jobs SET state = {_FAILED}, last_error_code = $2, last_error_reason = '{STALLED}',
            last_error_message = $3, update_time = now()
        WHERE state IN ({_QUEUED}, {_RUNNING}) AND update_time < now() - make_interval(secs => $1)
        RETURNING id, tenant, items_total, items_succeeded, items_failed
        """,
        idle_s,
        code,
        message,
    )


async def lock(connection: Connection, tenant: str, job_id: uuid.UUID) -> asyncpg.Record | None:
    """One job of ``tenant``, locked until the transaction ends (RetryJob calls take turns)."""
    return await connection.fetchrow(
        "SELECT * FROM jobs WHERE id = $1 AND tenant = $2 FOR UPDATE", job_id, tenant
    )


async def start_retry(connection: Connection, tenant: str, job_id: uuid.UUID, items: int) -> asyncpg.Record:
    """Opens the next retry round of ``items`` failed items: uncounts them, RUNNING again.

    The re-run records count them again (succeeded or failed) as ingest writes them.
    """
    row = await connection.fetchrow(
        "UPDATE jobs SET retry_count = retry_count + 1, items_failed = items_failed - $3, state = $4,"
        " last_error_code = NULL, last_error_reason = NULL, last_error_message = NULL,"
        " update_time = now() WHERE id = $1 AND tenant = $2 RETURNING *",
        job_id,
        tenant,
        items,
        _RUNNING,
    )
    if row is None:  # the caller holds the job's lock, so it cannot have gone
        raise LookupError(f"job {job_id} vanished during its retry")
    return row
