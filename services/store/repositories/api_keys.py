"""SQL for API keys, which are stored only as SHA-256 digests."""

from __future__ import annotations

import asyncpg

from services.store.repositories import Connection


async def upsert(connection: Connection, key_sha256: str, tenant: str, name: str) -> None:
    """Makes sure the key exists, un-revoked, for ``tenant``."""
    await connection.execute(
        "INSERT INTO api_keys (key_sha256, tenant, name) VALUES ($1, $2, $3)"
        " ON CONFLICT (key_sha256) DO UPDATE SET tenant = $2, name = $3, revoked_at = NULL",
        key_sha256,
        tenant,
        name,
    )


async def lookup(connection: Connection, key_sha256: str) -> asyncpg.Record | None:
    """The live key with this digest, or None."""
    return await connection.fetchrow(
        "SELECT tenant, name FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL", key_sha256
    )
