"""Migrations on a real Postgres database: all apply, once, even when replicas race; old data is kept true."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from ferry.jobs.v1 import job_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import error_from_status
from services.store import codec
from services.store.migrate import migrate, migration_files
from tests.store.conftest import fresh_database
from tests.store.records import error_info

ALL = [version for version, _ in migration_files()]


def migrations_before(version: int, folder: Path) -> Path:
    """A copy of the migrations older than ``version``: a database as an older store left it."""
    older = folder / "migrations"
    older.mkdir()
    for number, path in migration_files():
        if number < version:
            shutil.copy(path, older)
    return older


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
    before_0003 = migrations_before(3, tmp_path)
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
    before_0004 = migrations_before(4, tmp_path)
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


def _json(message: Message) -> dict[str, object]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


async def test_0008_reads_rows_of_json_classes_and_timing_back_unchanged(
    postgres_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_0008 = migrations_before(8, tmp_path)
    made = [
        prediction_pb2.Prediction(
            name=f"predictions/{uuid.uuid4()}",
            model="models/m",
            state=prediction_pb2.PREDICTION_STATE_SUCCEEDED,
            classes=classes,
            timing=timing,
        )
        for classes, timing in [
            (
                [
                    types_pb2.ClassScore(label='tiger "cat" é', score=0.954144657, index=282),
                    types_pb2.ClassScore(label="", score=0.0, index=3),
                    types_pb2.ClassScore(label="tiny", score=1e-30),
                ],
                types_pb2.Timing(decode_ms=6.123456789, inference_ms=27.3, total_ms=41.2, batch_size=4),
            ),
            (
                [types_pb2.ClassScore(label="odd", score=float("nan"), index=1)],
                types_pb2.Timing(queue_ms=1e-7),
            ),
            ([types_pb2.ClassScore(score=0.5, index=7)], types_pb2.Timing(total_ms=float("inf"))),
            ([], types_pb2.Timing()),
        ]
    ]
    async with fresh_database(postgres_uri) as url:
        connection = await asyncpg.connect(url)
        try:
            with monkeypatch.context() as patch:
                patch.setattr("services.store.migrate.MIGRATIONS_DIR", before_0008)
                await migrate(connection)
            for prediction in made:  # as ingest wrote them before 0008: json_format's JSON
                await connection.execute(
                    "INSERT INTO predictions (id, tenant, model, state, classes, timing, create_time, source)"
                    " VALUES ($1, 't', 'm', 1, $2::jsonb, $3::jsonb, now(), 1)",
                    uuid.UUID(prediction.name.removeprefix("predictions/")),
                    json.dumps([_json(c) for c in prediction.classes]),
                    json.dumps(_json(prediction.timing)),
                )  # fmt: skip
            top = "SELECT id, top_label, top_score FROM predictions ORDER BY id"
            tops_before = [tuple(r) for r in await connection.fetch(top)]
            assert await migrate(connection) == [v for v, _ in migration_files() if v >= 8]
            tops_after = [tuple(r) for r in await connection.fetch(top)]
            rows = {r["id"]: r for r in await connection.fetch("SELECT * FROM predictions")}
        finally:
            await connection.close()
    assert repr(tops_after) == repr(tops_before)  # repr: NaN equals NaN there
    for prediction in made:
        back = codec.prediction_from_row(rows[uuid.UUID(prediction.name.removeprefix("predictions/"))])
        # What the API read from the JSON row before 0008.
        was = json_format.ParseDict(json_format.MessageToDict(prediction), prediction_pb2.Prediction())
        assert [c.SerializeToString() for c in back.classes] == [c.SerializeToString() for c in was.classes]
        assert back.timing.SerializeToString() == was.timing.SerializeToString()
