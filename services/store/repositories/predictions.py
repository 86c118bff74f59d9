"""SQL for prediction records."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from services.store.codec import PredictionRow
from services.store.repositories import Connection

# The Postgres type of each column, in codec.PredictionRow's field order.
_COLUMN_TYPES = {
    "id": "uuid", "tenant": "text", "model": "text", "job_id": "uuid", "item_index": "integer",
    "state": "smallint", "classes": "jsonb", "timing": "jsonb", "error": "bytea",
    "error_code": "integer", "error_message": "text", "error_reason": "text", "trace_id": "text",
    "create_time": "timestamptz",
}  # fmt: skip
if tuple(_COLUMN_TYPES) != PredictionRow._fields:
    raise RuntimeError("predictions' column list and codec.PredictionRow disagree")

# One statement for the whole batch: each column travels as one array parameter, so neither the
# round trips nor the statement text grow with the batch.
_INSERT = (
    f"INSERT INTO predictions ({', '.join(_COLUMN_TYPES)}) SELECT * FROM unnest("
    + ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_COLUMN_TYPES.values(), start=1))
    + ") ON CONFLICT (id) DO NOTHING RETURNING tenant, job_id, state"
)


async def insert_many(connection: Connection, rows: Sequence[PredictionRow]) -> list[asyncpg.Record]:
    """Inserts rows, skipping ids already stored.

    Returns:
        (tenant, job_id, state) of the rows really inserted: a redelivered record is not among them.
    """
    if not rows:
        return []
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
