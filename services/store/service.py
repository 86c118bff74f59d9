"""store as a FerryService: migrate, bootstrap the dev key, serve reads, ingest events."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

import asyncpg
import grpc

from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common import scopes
from services.common.messaging import connect, ensure_streams
from services.common.readiness import Probe, Readiness, watch_dependency
from services.common.tasks import spawn
from services.store.ingest import Ingestor, tune_gc
from services.store.job_events import JobEvents
from services.store.migrate import migrate
from services.store.outage import quiet_pool_floor_retries
from services.store.repositories import api_keys
from services.store.retention import run_retention
from services.store.servicer import StoreServicer
from services.store.settings import StoreSettings
from services.store.stalls import WorkQueue, run_stall_sweeper

log = logging.getLogger(__name__)

SERVICE_NAME = store_service_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name
PROBE_TIMEOUT_S = 2.0


def postgres_probe(pool: asyncpg.Pool, timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """A readiness probe: "" while the pool can run ``SELECT 1`` within ``timeout_s``.

    It goes through the pool, as every RPC does: a server that refuses new connections (too many,
    restarting) counts as down even while an old connection still works. The timeout keeps a
    black-holed network from holding the probe; a pool so busy that it cannot lend a connection
    for that long is in no state to serve either.
    """

    async def probe() -> str:
        try:
            async with asyncio.timeout(timeout_s):
                await pool.fetchval("SELECT 1")
        except TimeoutError:
            return f"no answer to SELECT 1 within {timeout_s:g} s"
        except Exception as err:
            return f"cannot run SELECT 1: {err!r}"
        return ""

    return probe


async def create_pool(settings: StoreSettings) -> asyncpg.Pool:
    """A pool on ``database_url`` (TLS as its ``sslmode`` says) with the statement timeout set."""
    server_settings = {"statement_timeout": str(settings.statement_timeout_ms)}
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        server_settings=server_settings,
    )


class StoreService:
    """The only owner of Postgres."""

    name = "store"

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self._servicer: StoreServicer | None = None

    def service_names(self) -> Sequence[str]:
        return [SERVICE_NAME]

    def register(self, server: grpc.aio.Server) -> None:
        self._servicer = StoreServicer()
        store_service_pb2_grpc.add_StoreServiceServicer_to_server(self._servicer, server)

    async def start(self, stack: AsyncExitStack, readiness: Readiness) -> None:
        s = self.settings
        if not s.database_url:
            raise ValueError(
                "FERRY_STORE_DATABASE_URL is not set; give store a Postgres URI, for example"
                " postgresql://user:password@127.0.0.1:5432/ferry"
            )
        quiet_pool_floor_retries()
        pool = await create_pool(s)
        stack.push_async_callback(pool.close)
        async with pool.acquire() as connection:
            applied = await migrate(connection)
            if s.dev_api_key:
                digest = hashlib.sha256(s.dev_api_key.encode()).hexdigest()
                async with connection.transaction():
                    await api_keys.upsert(connection, digest, s.dev_tenant, "dev", scopes.ALL)
                log.info("dev API key ready for tenant %r", s.dev_tenant)
        log.info("schema ready (%d migrations applied now)", len(applied))
        assert self._servicer is not None
        self._servicer.bind(pool)
        await watch_dependency(stack, readiness, "postgres", postgres_probe(pool))

        _, js = await connect(s.nats_url, "ferry-store", stack)
        await ensure_streams(js, s.nats_stream_replicas, s.nats_duplicate_window_s)
        ingestor = Ingestor(
            js, pool, s.consumer_name, s.ingest_batch_size, s.ingest_max_wait_s, s.ingest_retry_delay_s
        )
        tune_gc()
        for n in range(s.ingest_concurrency):
            spawn(stack, ingestor.run(await ingestor.subscribe(), n > 0), f"store-ingest-{n}")
        job_events = JobEvents(js, pool, s.job_events_consumer)
        spawn(stack, job_events.run(await job_events.subscribe()), "store-job-events")
        if s.retention_days:
            retention = run_retention(pool, s.retention_days, s.retention_batch_size, s.retention_interval_s)
            spawn(stack, retention, "store-retention")
        if s.job_stall_timeout_s:
            queue = WorkQueue(js)
            sweeper = run_stall_sweeper(pool, queue, s.job_stall_timeout_s, s.job_stall_check_interval_s)
            spawn(stack, sweeper, "store-stalled-jobs")
