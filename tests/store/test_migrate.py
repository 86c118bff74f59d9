"""Migrations on a real Postgres database: all apply, once, even when replicas race; old data is kept true."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest

from ferry.jobs.v1 import job_pb2
from services.common.errors import error_from_status
from services.store import codec
from services.store.migrate import migrate, migration_files
from tests.store.conftest import fresh_database
from tests.store.records import error_info

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


async def test_0003_tells_the_truth_about_jobs_that_finished_before_it(
    postgres_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_0003 = tmp_path / "migrations"
    before_0003.mkdir()
    for version, path in migration_files():
        if version < 3:
            shutil.copy(path, before_0003)
    mixed, hopeless = uuid.uuid4(), uuid.uuid4()
    async with fresh_database(postgres_uri) as url:
        connection = await asyncpg.connect(url)
        try:
            with monkeypatch.context() as patch:
                patch.setattr("services.store.migrate.MIGRATIONS_DIR", before_0003)
                assert await migrate(connection) == [1, 2]
            # As 0002's code left them: a mixed job SUCCEEDED, the failed job without an error.
            for job_id, state, ok, bad in [(mixed, 3, 1, 1), (hopeless, 4, 0, 1)]:
                await connection.execute(
                    "INSERT INTO jobs (id, tenant, model, state, items_total, items_succeeded,"
                    " items_failed, top_k) VALUES ($1, 't', 'm', $2, $3, $4, $5, 5)",
                    job_id, state, ok + bad, ok, bad,
                )  # fmt: skip
                await connection.execute(
                    "INSERT INTO predictions (id, tenant, model, job_id, item_index, state, error_code,"
                    " error_message, error_reason, create_time)"
                    " VALUES ($1, 't', 'm', $2, 0, 2, 3, 'not an image', 'INVALID_IMAGE', now())",
                    uuid.uuid4(), job_id,
                )  # fmt: skip
            assert await migrate(connection) == ALL[2:]  # 0003 and every later one
            rows = [
                await connection.fetchrow("SELECT * FROM jobs WHERE id = $1", j) for j in (mixed, hopeless)
            ]
        finally:
            await connection.close()
    jobs = [codec.job_from_row(row) for row in rows]
    assert [job.state for job in jobs] == [job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED, job_pb2.JOB_STATE_FAILED]
    for job in jobs:
        error = error_from_status(job.error)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ITEMS_FAILED")
        assert error_info(job.error).metadata["last_reason"] == "INVALID_IMAGE"


async def test_0004_classifies_older_predictions_by_job_and_fills_the_top_class(
    postgres_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_0004 = tmp_path / "migrations"
    before_0004.mkdir()
    for version, path in migration_files():
        if version < 4:
            shutil.copy(path, before_0004)
    sync, item = uuid.uuid4(), uuid.uuid4()
    async with fresh_database(postgres_uri) as url:
        connection = await asyncpg.connect(url)
        try:
            with monkeypatch.context() as patch:
                patch.setattr("services.store.migrate.MIGRATIONS_DIR", before_0004)
                assert await migrate(connection) == [1, 2, 3]
            for record_id, job_id in [(sync, None), (item, uuid.uuid4())]:
                await connection.execute(
                    "INSERT INTO predictions (id, tenant, model, job_id, item_index, state, classes,"
                    " create_time) VALUES ($1, 't', 'm', $2, 0, 1,"
                    ' \'[{"label": "espresso", "score": 0.95}]\', now())',
                    record_id, job_id,
                )  # fmt: skip
            # 0004 and every later migration run now.
            assert await migrate(connection) == [v for v, _ in migration_files() if v >= 4]
            rows = {
                r["id"]: (r["source"], r["top_label"], round(r["top_score"], 2))
                for r in await connection.fetch("SELECT id, source, top_label, top_score FROM predictions")
            }
        finally:
            await connection.close()
    assert rows == {sync: (1, "espresso", 0.95), item: (2, "espresso", 0.95)}


async def test_the_migrate_command_applies_migrations_and_exits(postgres_uri: str) -> None:
    async with fresh_database(postgres_uri) as url:
        env = {**os.environ, "FERRY_STORE_DATABASE_URL": url}
        command = [sys.executable, "-m", "services.store", "migrate"]
        done = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
        )
        again = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
        )
        connection = await asyncpg.connect(url)
        try:
            recorded = [r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")]
        finally:
            await connection.close()
    assert (done.returncode, again.returncode) == (0, 0), done.stderr
    assert sorted(recorded) == ALL
    assert f"{len(ALL)} migrations applied now" in done.stdout and "0 migrations applied now" in again.stdout
