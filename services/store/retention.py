"""Deletes expired predictions in bounded batches, in the background, never holding ingest up.

Each batch is one short ``DELETE … WHERE id IN (SELECT id … LIMIT n)`` transaction on the
``create_time`` BRIN index: it locks only the rows it deletes (new rows are never among them), so
ingest and reads go on meanwhile, and a batch that fails (Postgres away) is simply tried again on
the next round. Why batches and not time partitions: docs/store.md, *Retention*.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from services.store.outage import UNREACHABLE
from services.store.repositories import Connection

log = logging.getLogger(__name__)

# Postgres away, or a batch it refused: either way the next round tries again.
ROUND_FAILED: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *UNREACHABLE)

_DELETE_BATCH = (
    "DELETE FROM predictions WHERE id IN (SELECT id FROM predictions WHERE create_time < $1 LIMIT $2)"
)


async def delete_batch(connection: Connection, before: datetime, limit: int) -> int:
    """Deletes at most ``limit`` predictions made before ``before``; returns how many."""
    status = await connection.execute(_DELETE_BATCH, before, limit)
    return int(status.split()[-1])  # "DELETE <n>"


async def purge(pool: asyncpg.Pool, days: int, batch_size: int, pause_s: float = 0.05) -> int:
    """Deletes every prediction older than ``days`` days, batch by batch; returns how many."""
    before = datetime.now(UTC) - timedelta(days=days)
    total = 0
    while True:
        async with pool.acquire() as connection, connection.transaction():
            deleted = await delete_batch(connection, before, batch_size)
        total += deleted
        if deleted < batch_size:
            return total
        await asyncio.sleep(pause_s)  # leave the disk and the pool to ingest between batches


async def run_retention(pool: asyncpg.Pool, days: int, batch_size: int, interval_s: float) -> None:
    """Purges expired predictions every ``interval_s`` until cancelled; failures wait for the next round."""
    while True:
        try:
            deleted = await purge(pool, days, batch_size)
            if deleted:
                log.info("retention: deleted %d predictions older than %d days", deleted, days)
        except ROUND_FAILED as err:
            # An outage is store's to report, once, from ingest; retention just waits its turn.
            log.info("retention round failed, trying again in %.0fs: %r", interval_s, err)
        await asyncio.sleep(interval_s)
