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
_EXPANDING = job_pb2.JOB_STATE_EXPANDING
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
    """Inserts a queued job (or an expanding one, when ``job.state`` says so: its items are not
    known yet) unless its id exists; returns (the row, whether it was inserted)."""
    row = await connection.fetchrow(
        "INSERT INTO jobs (id, tenant, request_id, model, state, items_total, top_k, trace_id, priority)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING *",
        job_id,
        tenant,
        job.request_id,
        job.model.removeprefix("models/"),
        _EXPANDING if job.state == _EXPANDING else _QUEUED,
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
    """Moves an unfinished job to CANCELLED; returns the job (unchanged if it had finished).

    An EXPANDING job is cancelled too: its expansion stops at its next chunk (the jobs service
    asks the cancelled-jobs bucket), and the items already queued are skipped.
    """
    row = await connection.fetchrow(
        "UPDATE jobs SET state = $3, update_time = now()"
        " WHERE id = $1 AND tenant = $2 AND state IN ($4, $5, $6) RETURNING *",
        job_id,
        tenant,
        _CANCELLED,
        _QUEUED,
        _RUNNING,
        _EXPANDING,
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


def _state_by_counts(succeeded: str, failed: str, total: str) -> str:
    """SQL: the state of an unfinished job whose counters are ``succeeded``, ``failed`` and
    ``total`` (SQL expressions; in an UPDATE's SET a column is its value before the update):
    RUNNING until every item is counted, then SUCCEEDED (none failed), FAILED (none succeeded, or a
    notebook cell failed) or PARTIALLY_SUCCEEDED. QUEUED is the caller's case."""
    return f"""CASE
                WHEN {succeeded} + {failed} < {total} THEN {_RUNNING}
                WHEN {failed} = 0 THEN {_SUCCEEDED}
                WHEN {succeeded} = 0 THEN {_FAILED}
                WHEN last_error_reason = '{_FAILS_WHOLE}' THEN {_FAILED}
                ELSE {_PARTIALLY_SUCCEEDED}
            END"""


async def count_finished_items(connection: Connection, progress: Sequence[Progress]) -> None:
    """Adds newly recorded items to their jobs' counters and moves each job's state.

    A record only moves a job of its own tenant. CANCELLED stays CANCELLED; any other job is
    RUNNING until every item is counted, then SUCCEEDED (none failed), FAILED (none succeeded, or a
    notebook cell failed: NOTEBOOK_CELL_FAILED) or PARTIALLY_SUCCEEDED. A job finished before is
    judged again: RetryJob moves counts back. An EXPANDING job only counts: its items_total is not
    known until its expansion ends (``finish_expansion`` judges it then).

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
                WHEN state IN ({_CANCELLED}, {_EXPANDING}) OR {_IS_STALLED} THEN state
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


async def finish_expansion(
    connection: Connection, tenant: str, job_id: uuid.UUID, items_total: int
) -> asyncpg.Record | None:
    """Sets an EXPANDING job's items_total and moves it on: QUEUED if none of its items was
    counted yet, else as its counts say (items may finish before the last chunk is read).

    A job cancelled while it expanded stays CANCELLED but gets the total of the items queued
    before the expansion saw the cancel: those already at a runner still run and are counted, and
    without it the job read "30 succeeded of 0".

    Returns the job, or None when it was neither (failed as stalled, or this is a redelivered
    event): nothing changes then.
    """
    return await connection.fetchrow(
        f"""
        UPDATE jobs SET items_total = $3, update_time = now(), state = CASE
                WHEN state = {_CANCELLED} THEN state
                WHEN items_succeeded + items_failed = 0 AND $3 > 0 THEN {_QUEUED}
                ELSE {_state_by_counts("items_succeeded", "items_failed", "$3")}
            END
        WHERE id = $1 AND tenant = $2
            AND (state = {_EXPANDING} OR (state = {_CANCELLED} AND items_total = 0))
        RETURNING *
        """,
        job_id,
        tenant,
        items_total,
    )


async def fail_expansion(
    connection: Connection, tenant: str, job_id: uuid.UUID, code: int, reason: str, message: str
) -> asyncpg.Record | None:
    """Fails an EXPANDING job with an error (a bad manifest line); None if it was not EXPANDING."""
    return await connection.fetchrow(
        f"""
        UPDATE jobs SET state = {_FAILED}, last_error_code = $3, last_error_reason = $4,
            last_error_message = $5, update_time = now()
        WHERE id = $1 AND tenant = $2 AND state = {_EXPANDING}
        RETURNING *
        """,
        job_id,
        tenant,
        code,
        reason,
        message,
    )


async def touch_expansion(connection: Connection, tenant: str, job_id: uuid.UUID) -> None:
    """Records that an EXPANDING job's expansion is alive (its stall clock starts again)."""
    await connection.execute(
        f"UPDATE jobs SET update_time = now() WHERE id = $1 AND tenant = $2 AND state = {_EXPANDING}",
        job_id,
        tenant,
    )


async def fail_stalled(
    connection: Connection,
    idle_s: float,
    code: int,
    message: str,
    expanding_message: str,
    queue_idle: bool = True,
) -> list[asyncpg.Record]:
    """Fails every queued, running or expanding job that made no progress for ``idle_s`` seconds.

    Progress is what moves ``update_time``: a job's creation, an item counted, a retry, an
    expansion's report that it read more lines. An expanding job gets ``expanding_message``.
    Without ``queue_idle`` only expanding jobs are judged: queued and running ones may be waiting
    their turn behind other work. Returns the failed jobs (id, tenant, counters, whether it was
    expanding), for the log.
    """
    return await connection.fetch(
        f"""
        WITH stalled AS (
            SELECT id, state = {_EXPANDING} AS expanding FROM jobs
            WHERE (state = {_EXPANDING} OR ($5 AND state IN ({_QUEUED}, {_RUNNING})))
                AND update_time < now() - make_interval(secs => $1)
            FOR UPDATE
        )
        UPDATE jobs SET state = {_FAILED}, last_error_code = $2, last_error_reason = '{STALLED}',
            last_error_message = CASE WHEN stalled.expanding THEN $4 ELSE $3 END, update_time = now()
        FROM stalled WHERE jobs.id = stalled.id
        RETURNING jobs.id, tenant, items_total, items_succeeded, items_failed, stalled.expanding
        """,
        idle_s,
        code,
        message,
        expanding_message,
        queue_idle,
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
