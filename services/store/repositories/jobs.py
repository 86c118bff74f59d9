"""SQL for jobs and their progress."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from ferry.jobs.v1 import job_pb2
from services.store.repositories import Connection

_QUEUED = job_pb2.JOB_STATE_QUEUED
_RUNNING = job_pb2.JOB_STATE_RUNNING
_SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
_FAILED = job_pb2.JOB_STATE_FAILED
_CANCELLED = job_pb2.JOB_STATE_CANCELLED


async def create(
    connection: Connection,
    job_id: uuid.UUID,
    tenant: str,
    job: job_pb2.Job,
) -> tuple[asyncpg.Record, bool]:
    """Inserts a queued job unless its id exists; returns (the row, whether it was inserted)."""
    row = await connection.fetchrow(
        "INSERT INTO jobs (id, tenant, request_id, model, state, items_total, top_k, trace_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING RETURNING *",
        job_id,
        tenant,
        job.request_id,
        job.model.removeprefix("models/"),
        _QUEUED,
        job.items_total,
        job.top_k,
        job.trace_id,
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


async def count_finished_items(
    connection: Connection,
    jobs: Sequence[tuple[str, uuid.UUID]],
    succeeded: Sequence[int],
    failed: Sequence[int],
) -> None:
    """Adds newly recorded items to their jobs' counters and moves each job's state.

    Args:
        connection: where to write (inside the transaction that inserted the items).
        jobs: (tenant, job id) of each job; a record never moves another tenant's job.
        succeeded: how many new succeeded items each job has.
        failed: how many new failed items each job has.

    QUEUED/RUNNING become RUNNING, or SUCCEEDED (all items done, at least one succeeded) or
    FAILED (all done, none succeeded). CANCELLED stays CANCELLED.
    """
    await connection.execute(
        f"""
        UPDATE jobs SET
            items_succeeded = items_succeeded + d.ok,
            items_failed = items_failed + d.bad,
            state = CASE
                WHEN state IN ({_CANCELLED}, {_SUCCEEDED}, {_FAILED}) THEN state
                WHEN items_succeeded + d.ok + items_failed + d.bad >= items_total THEN
                    CASE WHEN items_succeeded + d.ok > 0 THEN {_SUCCEEDED} ELSE {_FAILED} END
                ELSE {_RUNNING}
            END,
            update_time = now()
        FROM unnest($1::text[], $2::uuid[], $3::integer[], $4::integer[]) AS d(tenant, id, ok, bad)
        WHERE jobs.id = d.id AND jobs.tenant = d.tenant
        """,
        [tenant for tenant, _ in jobs],
        [job_id for _, job_id in jobs],
        list(succeeded),
        list(failed),
    )
