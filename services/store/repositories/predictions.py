"""SQL for prediction records."""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Sequence

import asyncpg

from ferry.predictions.v1 import prediction_pb2
from services.store.codec import PredictionRow
from services.store.repositories import Connection

_FAILED = prediction_pb2.PREDICTION_STATE_FAILED

# The Postgres type of each column, in codec.PredictionRow's field order.
_COLUMN_TYPES = {
    "id": "uuid", "tenant": "text", "model": "text", "job_id": "uuid", "item_index": "integer",
    "state": "smallint", "class_labels": "text[]", "class_scores": "real[]", "class_indices": "integer[]",
    "decode_ms": "double precision", "queue_ms": "double precision", "inference_ms": "double precision",
    "total_ms": "double precision", "batch_size": "integer", "error": "bytea",
    "error_code": "integer", "error_message": "text", "error_reason": "text", "trace_id": "text",
    "create_time": "timestamptz", "generation": "integer", "source": "smallint", "outputs": "jsonb",
    "model_version": "text", "input_name": "text",
}  # fmt: skip
if tuple(_COLUMN_TYPES) != PredictionRow._fields:
    raise RuntimeError("predictions' column list and codec.PredictionRow disagree")
_COLUMNS = ", ".join(_COLUMN_TYPES)

# What a re-run's record replaces in the row it re-queued; the row's identity stays.
_RERUN_COLUMNS = (
    "state", "class_labels", "class_scores", "class_indices", "decode_ms", "queue_ms", "inference_ms",
    "total_ms", "batch_size", "error", "error_code", "error_message", "error_reason", "trace_id",
    "create_time", "outputs", "model_version",
)  # fmt: skip

# A batch is first copied (binary COPY, one round trip, no statement text per row) into a temporary
# table of this connection, emptied at every commit; so concurrent ingest transactions never see
# each other's staging rows, and nothing of a failed batch stays behind. Temporary tables are not
# WAL-logged, which makes them cheaper than an UNLOGGED shared table with a batch key.
STAGING = "predictions_staging"
_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ("
    + ", ".join(f"{column} {kind}" for column, kind in _COLUMN_TYPES.items())
    + ") ON COMMIT DELETE ROWS"
)

# Then one statement moves the batch: a new id is inserted; an existing row is replaced only when
# RetryJob re-queued it (retry_pending) for exactly this record's generation, so a redelivered
# record, or one of an older round, changes nothing and is not returned.
_UPSERT = (
    f"INSERT INTO predictions ({_COLUMNS}) SELECT {_COLUMNS} FROM {STAGING}"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{column} = EXCLUDED.{column}" for column in _RERUN_COLUMNS)
    + ", ingest_time = now(), retry_pending = false"
    " WHERE predictions.retry_pending AND predictions.generation = EXCLUDED.generation"
    " AND predictions.tenant = EXCLUDED.tenant"
    " RETURNING tenant, job_id, state, error_code, error_reason, error_message"
)


# A small batch (what a fetch brings when records trickle in: a few gateway batches) goes in one
# INSERT … VALUES statement instead: one round trip, where the staging table costs four (create,
# COPY, move, and the transaction around them) and most of store's and Postgres's CPU per record
# at a few hundred predictions a second. Up to this many rows (a parameter per column each).
SMALL_BATCH = 32
_ON_CONFLICT = _UPSERT[_UPSERT.index(" ON CONFLICT") :]


@functools.cache
def _upsert_values(count: int) -> str:
    """The upsert of ``count`` rows given as parameters, with the staging path's conflict rule."""
    width = len(_COLUMN_TYPES)
    rows = (
        "("
        + ", ".join(f"${row * width + n}::{kind}" for n, kind in enumerate(_COLUMN_TYPES.values(), 1))
        + ")"
        for row in range(count)
    )
    return f"INSERT INTO predictions ({_COLUMNS}) VALUES " + ", ".join(rows) + _ON_CONFLICT


_INSERT_ONE = (
    f"INSERT INTO predictions ({_COLUMNS}) VALUES ("
    + ", ".join(f"${n}::{kind}" for n, kind in enumerate(_COLUMN_TYPES.values(), start=1))
    + ") ON CONFLICT (id) DO NOTHING RETURNING id"
)


def _one_per_id(rows: Sequence[PredictionRow]) -> list[PredictionRow]:
    """One row per id, the newest generation's: an upsert may not touch a row twice.

    A batch can hold the same record twice (published twice, or redelivered into the same fetch);
    Postgres refuses ``ON CONFLICT DO UPDATE`` on one id twice in a statement, which would hold
    the batch back forever. Of two generations only the newer can ever be written.
    """
    chosen: dict[uuid.UUID, PredictionRow] = {}
    for row in rows:
        kept = chosen.get(row.id)
        if kept is None or row.generation > kept.generation:
            chosen[row.id] = row
    return list(chosen.values())


async def upsert_many(connection: Connection, rows: Sequence[PredictionRow]) -> list[asyncpg.Record]:
    """Inserts new rows and lets re-run records replace the failed rows RetryJob re-queued.

    Must run inside a transaction (the staging table empties at its commit), unless the rows are
    at most ``SMALL_BATCH`` (one statement, a transaction of its own).

    Returns:
        (tenant, job_id, state, error_code, error_reason, error_message) of each row really
        written: a redelivered or stale record is not among them, so it counts nothing.
    """
    if not rows:
        return []
    if len(rows) <= SMALL_BATCH:
        unique = _one_per_id(rows)
        return list(
            await connection.fetch(_upsert_values(len(unique)), *itertools.chain.from_iterable(unique))
        )
    await connection.execute(_CREATE_STAGING)
    await connection.copy_records_to_table(STAGING, records=_one_per_id(rows), columns=list(_COLUMN_TYPES))
    return list(await connection.fetch(_UPSERT))


async def insert_one(connection: Connection, row: PredictionRow) -> bool:
    """Writes one row with its own ``INSERT … ON CONFLICT DO NOTHING``; True when it was new.

    The row-at-a-time path ingest used before COPY, kept as the benchmark's baseline.
    """
    return await connection.fetchval(_INSERT_ONE, *row) is not None


async def mark_failed_for_retry(
    connection: Connection, tenant: str, job_id: uuid.UUID, generation: int
) -> list[int]:
    """Marks a job's failed item rows pending a retry of ``generation``; returns their indexes."""
    rows = await connection.fetch(
        "UPDATE predictions SET retry_pending = true, generation = $3"
        " WHERE tenant = $1 AND job_id = $2 AND state = $4 RETURNING item_index",
        tenant,
        job_id,
        generation,
        _FAILED,
    )
    return sorted(r["item_index"] for r in rows)


async def pending_retry(connection: Connection, tenant: str, job_id: uuid.UUID) -> list[int]:
    """The indexes of a job's items still pending a retry, in order."""
    rows = await connection.fetch(
        "SELECT item_index FROM predictions WHERE tenant = $1 AND job_id = $2 AND retry_pending"
        " ORDER BY item_index",
        tenant,
        job_id,
    )
    return [r["item_index"] for r in rows]


async def get(connection: Connection, tenant: str, prediction_id: uuid.UUID) -> asyncpg.Record | None:
    """One prediction of ``tenant``, or None."""
    return await connection.fetchrow(
        "SELECT * FROM predictions WHERE id = $1 AND tenant = $2", prediction_id, tenant
    )
