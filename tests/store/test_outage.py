"""A Postgres outage delays records and loses none: a Postgres of this test's own is stopped."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from nats.js import JetStreamContext

from devstack.infra import Postgres
from services.common.messaging import EVENTS_STREAM
from services.store.migrate import migrate
from tests.store.conftest import running_ingestor
from tests.store.records import eventually, prediction, publish, rows_of


async def test_records_published_while_postgres_is_down_land_when_it_is_back(
    js: JetStreamContext, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data_dir = Path(tmp_path_factory.mktemp("pgout"))  # short: the unix socket lives in it
    server = Postgres(data_dir)
    pool = await asyncpg.create_pool(server.uri, min_size=1, max_size=2)
    try:
        async with pool.acquire() as connection:
            await migrate(connection)
        async with running_ingestor(js, pool) as consumer:
            server.stop()
            made = prediction()
            await publish(js, "outage", made, made.name)
            # Not acked, but handed back: JetStream redelivers it (naked after each failed write).
            info = await eventually(
                lambda: js.consumer_info(EVENTS_STREAM, consumer),
                lambda i: i.num_redelivered > 0 and i.num_pending == 0,
            )
            assert info.num_redelivered > 0 and info.num_ack_pending > 0

            server = Postgres(data_dir)  # the same data directory: the same database
            assert await rows_of(pool, made) == 1
    finally:
        await pool.close()
        server.stop()
