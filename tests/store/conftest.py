"""A fresh database per test module on the session's real Postgres, and a running store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import asyncpg
import grpc
import pytest
import pytest_asyncio

from devstack.infra import free_port
from ferry.store.v1 import store_service_pb2_grpc
from services.common.channels import open_channel
from services.common.interceptors import ServerInterceptor
from services.store.migrate import migrate
from services.store.servicer import StoreServicer


@pytest.fixture(scope="module")
def database_url(postgres_uri: str) -> Iterator[str]:
    """URI of an empty database of its own."""
    import asyncio

    name = f"store_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        connection = await asyncpg.connect(postgres_uri)
        await connection.execute(f'CREATE DATABASE "{name}"')
        await connection.close()

    asyncio.run(create())
    yield postgres_uri.replace("/postgres?", f"/{name}?")


@pytest_asyncio.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the module's database, schema migrated."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as connection:
        await migrate(connection)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="module")
async def store(pool: asyncpg.Pool) -> AsyncIterator[store_service_pb2_grpc.StoreServiceStub]:
    """A stub on an in-process store gRPC server bound to the module's database."""
    async with AsyncExitStack() as stack:
        server = grpc.aio.server(interceptors=[ServerInterceptor("store")])
        servicer = StoreServicer()
        servicer.bind(pool)
        store_service_pb2_grpc.add_StoreServiceServicer_to_server(servicer, server)
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = open_channel(f"127.0.0.1:{port}", 4 * 1024 * 1024)
        stack.push_async_callback(channel.close)
        yield store_service_pb2_grpc.StoreServiceStub(channel)
