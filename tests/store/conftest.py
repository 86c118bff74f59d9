"""Isolation for store tests on the session's shared Postgres and NATS.

Each test module gets a database of its own (created here, dropped at the end) and each ingestor
its own durable consumer, so these tests never see or disturb another module's rows or messages.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import grpc
import pytest_asyncio
from nats.js import JetStreamContext

from devstack.infra import free_port
from ferry.store.v1 import store_service_pb2_grpc
from services.common.channels import open_channel
from services.common.interceptors import ServerInterceptor
from services.common.messaging import EVENTS_STREAM, connect, ensure_streams
from services.common.readiness import Readiness
from services.common.tasks import spawn
from services.store.ingest import Ingestor
from services.store.migrate import migrate
from services.store.servicer import StoreServicer


@asynccontextmanager
async def fresh_database(postgres_uri: str) -> AsyncIterator[str]:
    """Creates an empty database on the server, yields its URI, then drops it."""
    name = f"store_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_uri)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_uri.replace("/postgres?", f"/{name}?")
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def running_ingestor(
    js: JetStreamContext, pool: asyncpg.Pool, max_wait_s: float = 0.05
) -> AsyncIterator[str]:
    """Runs an ingestor on a durable consumer of its own; yields the consumer's name.

    On exit the ingestor is stopped (it must still be alive: ingest may never die quietly) and
    its consumer deleted.
    """
    consumer = f"store-test-{uuid.uuid4().hex[:10]}"
    ingestor = Ingestor(js, pool, consumer, batch=64, max_wait_s=max_wait_s, retry_delay_s=0.1)
    async with AsyncExitStack() as stack:
        task = spawn(stack, ingestor.run(await ingestor.subscribe()), consumer)
        yield consumer
        assert not task.done(), task
    await js.delete_consumer(EVENTS_STREAM, consumer)


@pytest_asyncio.fixture(scope="module")
async def database_url(postgres_uri: str) -> AsyncIterator[str]:
    """URI of an empty database of this module's own."""
    async with fresh_database(postgres_uri) as url:
        yield url


@pytest_asyncio.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the module's database, schema migrated."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as connection:
        await migrate(connection)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="module")
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """JetStream on the session's nats-server, with Ferry's streams."""
    async with AsyncExitStack() as stack:
        _, js = await connect(nats_url, "store-tests", stack)
        await ensure_streams(js)
        yield js


@pytest_asyncio.fixture(scope="module")
async def store(pool: asyncpg.Pool) -> AsyncIterator[store_service_pb2_grpc.StoreServiceStub]:
    """A stub on an in-process store gRPC server bound to the module's database."""
    servicer = StoreServicer()
    servicer.bind(pool)
    async with serving(
        lambda server: store_service_pb2_grpc.add_StoreServiceServicer_to_server(servicer, server)
    ) as channel:
        yield store_service_pb2_grpc.StoreServiceStub(channel)


@asynccontextmanager
async def serving(
    register: Callable[[grpc.aio.Server], None], readiness: Readiness | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """Runs an in-process grpc.aio server (with Ferry's interceptor) on a free port; yields a channel.

    Args:
        register: adds the store servicer to the server, as FerryService.register does.
        readiness: the interceptor's readiness gate; by default one that is already started.
    """
    async with AsyncExitStack() as stack:
        gate = readiness or Readiness.started("store")
        server = grpc.aio.server(interceptors=[ServerInterceptor("store", gate)])
        register(server)
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = open_channel(f"127.0.0.1:{port}", 4 * 1024 * 1024)
        stack.push_async_callback(channel.close)
        yield channel
