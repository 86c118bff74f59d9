from __future__ import annotations

import asyncpg

from services.store.migrate import migrate, migration_files


async def test_migrations_apply_once(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        first = await migrate(connection)
        again = await migrate(connection)
        tables = {r["tablename"] for r in await connection.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await connection.close()
    assert again == []
    assert first in ([], [v for v, _ in migration_files()])  # the pool fixture may have run first
    assert {"predictions", "jobs", "api_keys", "schema_migrations"} <= tables
