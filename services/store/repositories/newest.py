"""Keyset pagination, newest first, shared by every tenant-scoped table."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import asyncpg

from services.store.repositories import Connection


async def newest_first(
    connection: Connection,
    table: Literal["jobs", "predictions"],
    tenant: str,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[asyncpg.Record]:
    """``tenant``'s rows of ``table`` by (create_time, id) descending, after a keyset position."""
    # ``table`` is one of two literals, never user input, so formatting it in is safe.
    if after is None:
        query = f"SELECT * FROM {table} WHERE tenant = $1 ORDER BY create_time DESC, id DESC LIMIT $2"
        return list(await connection.fetch(query, tenant, limit))
    query = (
        f"SELECT * FROM {table} WHERE tenant = $1 AND (create_time, id) < ($3, $4)"
        " ORDER BY create_time DESC, id DESC LIMIT $2"
    )
    return list(await connection.fetch(query, tenant, limit, *after))
