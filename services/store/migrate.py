"""Applies the numbered SQL files in migrations/ once each, in order.

Each file runs in its own transaction and is recorded in ``schema_migrations``; an advisory lock
makes replicas that start together take turns instead of racing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.store.repositories import Connection

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x46455252  # "FERR": any constant shared by every store replica


def migration_files() -> list[tuple[int, Path]]:
    """Returns (version, path) for every ``NNNN_name.sql``, by version."""
    found = [(int(p.name.split("_", 1)[0]), p) for p in MIGRATIONS_DIR.glob("[0-9]*_*.sql")]
    return sorted(found)


async def migrate(connection: Connection) -> list[int]:
    """Applies pending migrations; returns the versions applied now."""
    await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, path in migration_files():
            if version in done:
                continue
            async with connection.transaction():
                # An index on a big table may take longer than the service's statement timeout.
                await connection.execute("SET LOCAL statement_timeout = 0")
                await connection.execute(path.read_text())
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, path.name
                )
            log.info("applied migration %s", path.name)
            applied.append(version)
        return applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
