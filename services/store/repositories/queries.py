"""SQL for what users ask of their predictions: filtered listings and per-model statistics."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ferry.predictions.v1 import prediction_pb2
from services.store.repositories import Connection

_FAILED = prediction_pb2.PREDICTION_STATE_FAILED
_SUCCEEDED = prediction_pb2.PREDICTION_STATE_SUCCEEDED


@dataclass(frozen=True)
class PredictionFilter:
    """Which of a tenant's predictions to list; a field left at its zero value filters nothing."""

    tenant: str
    model: str = ""
    label: str = ""
    min_score: float = 0.0
    start_time: datetime | None = None
    end_time: datetime | None = None
    job_id: uuid.UUID | None = None
    source: int = 0
    state: int = 0

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause (without the keyword) and its parameters, numbered from $1."""
        clauses: list[str] = []
        values: list[Any] = []

        def add(template: str, value: Any) -> None:
            values.append(value)
            clauses.append(template.format(f"${len(values)}"))

        add("tenant = {}", self.tenant)
        if self.job_id is not None:
            add("job_id = {}", self.job_id)
        if self.model:
            add("model = {}", self.model)
        if self.label:
            add("top_label = {}", self.label)
        if self.min_score > 0:
            add("top_score >= {}", self.min_score)
        if self.start_time is not None:
            add("create_time >= {}", self.start_time)
        if self.end_time is not None:
            add("create_time < {}", self.end_time)
        if self.source:
            add("source = {}", self.source)
        if self.state:
            # A literal, not a parameter, for FAILED: the planner can then use the partial index
            # predictions_tenant_failed (a generic plan with $n could not prove its predicate).
            if self.state == _FAILED:
                clauses.append(f"state = {_FAILED}")
            else:
                add("state = {}", self.state)
        return " AND ".join(clauses), values


async def list_newest(
    connection: Connection,
    where: PredictionFilter,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[asyncpg.Record]:
    """Matching predictions by (create_time, id) descending, after a keyset position.

    Keyset paging stays stable under inserts: a page continues strictly below the last row seen,
    so rows written meanwhile never shift a later page or show up twice.
    """
    condition, values = where.where()
    if after is not None:
        values.extend(after)
        condition += f" AND (create_time, id) < (${len(values) - 1}, ${len(values)})"
    values.append(limit)
    query = (
        f"SELECT * FROM predictions WHERE {condition} ORDER BY create_time DESC, id DESC LIMIT ${len(values)}"
    )
    return list(await connection.fetch(query, *values))


async def list_job_items(
    connection: Connection, where: PredictionFilter, limit: int, after_index: int
) -> list[asyncpg.Record]:
    """Matching predictions of ``where.job_id`` in item order, after ``after_index``."""
    condition, values = where.where()
    values.extend([after_index, limit])
    query = (
        f"SELECT * FROM predictions WHERE {condition} AND item_index > ${len(values) - 1}"
        f" ORDER BY item_index LIMIT ${len(values)}"
    )
    return list(await connection.fetch(query, *values))


# Percentiles over the succeeded predictions' timing (a failed one has none worth ranking).
_STATS = f"""
SELECT
    count(*) AS requests,
    count(*) FILTER (WHERE state = {_FAILED}) AS errors,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY total_ms)
        FILTER (WHERE state = {_SUCCEEDED}) AS total_ms,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY inference_ms)
        FILTER (WHERE state = {_SUCCEEDED}) AS inference_ms,
    avg(batch_size::float8) FILTER (WHERE state = {_SUCCEEDED}) AS batch_size_mean
FROM predictions
WHERE tenant = $1 AND model = $2 AND create_time >= $3 AND create_time < $4
"""

_TOP_LABELS = """
SELECT top_label AS label, count(*) AS count
FROM predictions
WHERE tenant = $1 AND model = $2 AND create_time >= $3 AND create_time < $4 AND top_label IS NOT NULL
GROUP BY top_label
ORDER BY count DESC, label
LIMIT $5
"""


async def model_stats(
    connection: Connection, tenant: str, model: str, start: datetime, end: datetime, top_labels: int
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """The statistics row of ``_STATS`` and the ``top_labels`` most frequent top labels."""
    stats = await connection.fetchrow(_STATS, tenant, model, start, end)
    assert stats is not None  # an aggregate without GROUP BY always yields one row
    labels = await connection.fetch(_TOP_LABELS, tenant, model, start, end, top_labels)
    return stats, list(labels)
