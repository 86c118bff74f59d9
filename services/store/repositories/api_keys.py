"""SQL for API keys, which are stored only as SHA-256 digests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.store.repositories import Connection

#: What a key row returns: never the digest, and ``created_at`` under the name pages key on.
_COLUMNS = "id, tenant, name, scopes, rate_per_s, burst, hint, created_at AS create_time, revoked_at"


async def upsert(
    connection: Connection, key_sha256: str, tenant: str, name: str, scopes: Sequence[str] | None = None
) -> None:
    """Makes sure the key exists, un-revoked, for ``tenant`` (with ``scopes`` when given)."""
    if scopes is None:
        await connection.execute(
            "INSERT INTO api_keys (key_sha256, tenant, name) VALUES ($1, $2, $3)"
            " ON CONFLICT (key_sha256) DO UPDATE SET tenant = $2, name = $3, revoked_at = NULL",
            key_sha256,
            tenant,
            name,
        )
        return
    await connection.execute(
        "INSERT INTO api_keys (key_sha256, tenant, name, scopes) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (key_sha256) DO UPDATE SET tenant = $2, name = $3, scopes = $4, revoked_at = NULL",
        key_sha256,
        tenant,
        name,
        list(scopes),
    )


async def lookup(connection: Connection, key_sha256: str) -> asyncpg.Record | None:
    """The live key with this digest, or None."""
    return await connection.fetchrow(
        f"SELECT {_COLUMNS} FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL", key_sha256
    )


async def create(
    connection: Connection,
    key_sha256: str,
    tenant: str,
    name: str,
    scopes: Sequence[str],
    rate_per_s: float,
    burst: int,
    hint: str,
) -> asyncpg.Record | None:
    """Inserts a new key; None when a key with this digest exists already."""
    return await connection.fetchrow(
        "INSERT INTO api_keys (key_sha256, tenant, name, scopes, rate_per_s, burst, hint)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key_sha256) DO NOTHING"
        f" RETURNING {_COLUMNS}",
        key_sha256,
        tenant,
        name,
        list(scopes),
        rate_per_s,
        burst,
        hint,
    )


async def newest(
    connection: Connection,
    tenant: str,
    include_revoked: bool,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[asyncpg.Record]:
    """Keys by (created_at, id) descending after a keyset position; every tenant's when ``tenant`` is ''."""
    query = (
        f"SELECT {_COLUMNS} FROM api_keys WHERE ($1 = '' OR tenant = $1) AND ($2 OR revoked_at IS NULL)"
        " AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))"
        " ORDER BY created_at DESC, id DESC LIMIT $3"
    )
    position = after or (None, None)
    return list(await connection.fetch(query, tenant, include_revoked, limit, *position))


async def revoke(connection: Connection, key_id: uuid.UUID) -> asyncpg.Record | None:
    """Revokes the key (keeping the first revocation time); returns it with its digest, or None."""
    return await connection.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
        f" RETURNING key_sha256, {_COLUMNS}",
        key_id,
    )
