"""Migrations on a real, empty Postgres database: all apply, once, even when replicas race."""

from __future__ import annotations

import asyncio

import asyncpg

from services.store.migrate import migrate, migration_files
from tests.store.conftest import fresh_database

ALL = [version for version, _ in migration_files()]


async def test_migrations_apply_once_and_reapply_as_a_no_op(postgres_uri: str) -> None:
    async with fresh_database(postgres_uri) as url:
        connection = await asyncpg.connect(url)
        try:
            first = await migrate(connection)
            again = await migrate(connection)
            tables = {r["tablename"] for r in await connection.fetch("SELECT tablename FROM pg_tables")}
            recorded = [r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")]
        finally:
            await connection.close()
    assert ALL[:2] == [1, 2]
    assert (first, again, sorted(recorded)) == (ALL, [], ALL)
    assert {"predictions", "jobs", "api_keys", "schema_migrations"} <= tables


async def test_replicas_starting_together_apply_each_migration_once(postgres_uri: str) -> None:
    async with fresh_database(postgres_uri) as url:
        connections = [await asyncpg.connect(url) for _ in range(3)]
        try:
            # Without the advisory lock the losers would fail on "relation already exists".
            applied = await asyncio.gather(*(migrate(c) for c in connections))
        finally:
            for connection in connections:
                await connection.close()
    assert sorted(applied) == [[], [], ALL]
