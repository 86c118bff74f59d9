"""SQL for prediction records."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.store.repositories import Connection

_INSERT = """
INSERT INTO predictions
    (id, tenant, model, job_id, item_index, state, classes, timing, error, trace_id, create_time)
SELECT * FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::integer[], $6::smallint[],
    $7::jsonb[], $8::jsonb[], $9::bytea[], $10::text[], $11::timestamptz[])
ON CONFLICT (id) DO NOTHING
RETURNING job_id, state
"""


async def insert_many(connection: Connection, rows: Sequence[tuple[Any, ...]]) -> list[asyncpg.Record]:
    """Inserts rows (see codec.PREDICTION_COLUMNS), skipping ids already stored.

    Returns:
        (job_id, state) of the rows really inserted: a redelivered record is not among them.
    """
    columns = [list(column) for column in zip(*rows, strict=True)]
    return list(await connection.fetch(_INSERT, *columns))


async def get(connection: Connection, tenant: str, prediction_id: uuid.UUID) -> asyncpg.Record | None:
    """One prediction of ``tenant``, or None."""
    return await connection.fetchrow(
        "SELECT * FROM predictions WHERE id = $1 AND tenant = $2", prediction_id, tenant
    )


async def list_job_items(
    connection: Connection, tenant: str, job_id: uuid.UUID, limit: int, after_index: int
) -> list[asyncpg.Record]:
    """A job's item predictions in item order, after ``after_index``."""
    query = (
        "SELECT * FROM predictions WHERE tenant = $1 AND job_id = $2 AND item_index > $3"
        " ORDER BY item_index LIMIT $4"
    )
    return list(await connection.fetch(query, tenant, job_id, after_index, limit))
