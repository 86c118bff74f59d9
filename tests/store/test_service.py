"""StoreService.start as `python -m services.store` runs it: settings, schema, dev key, ingest."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import grpc
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common.messaging import EVENTS_STREAM
from services.common.readiness import Readiness
from services.store.service import StoreService
from services.store.settings import StoreSettings
from tests.store.conftest import serving
from tests.store.records import prediction, publish, rows_of

DEV_KEY = f"dev-{uuid.uuid4().hex}"
DEV_TENANT = f"dev-{uuid.uuid4().hex[:6]}"


@pytest_asyncio.fixture(scope="module")
async def started(
    database_url: str, nats_url: str, js: JetStreamContext
) -> AsyncIterator[tuple[StoreSettings, store_service_pb2_grpc.StoreServiceStub]]:
    """A StoreService started from environment variables, serving on a free port."""
    env = {
        "FERRY_STORE_DATABASE_URL": database_url,
        "FERRY_STORE_NATS_URL": nats_url,
        "FERRY_DEV_API_KEY": DEV_KEY,  # the stack-wide name, not FERRY_STORE_DEV_API_KEY
        "FERRY_STORE_DEV_TENANT": DEV_TENANT,
        "FERRY_STORE_CONSUMER_NAME": f"store-test-{uuid.uuid4().hex[:10]}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        settings = StoreSettings()
    service = StoreService(settings)
    async with AsyncExitStack() as stack:
        # register() before start(), as run_service does: handlers exist before the pool.
        channel = await stack.enter_async_context(serving(service.register))
        await service.start(stack, Readiness.started("store"))
        yield settings, store_service_pb2_grpc.StoreServiceStub(channel)
    await js.delete_consumer(EVENTS_STREAM, settings.consumer_name)


async def test_the_dev_key_from_the_stack_wide_variable_is_bootstrapped(
    started: tuple[StoreSettings, store_service_pb2_grpc.StoreServiceStub],
) -> None:
    settings, store = started
    assert settings.dev_api_key == DEV_KEY
    digest = hashlib.sha256(DEV_KEY.encode()).hexdigest()
    found = await store.LookupApiKey(pb.LookupApiKeyRequest(key_sha256=digest))
    assert (found.tenant, found.key_name) == (DEV_TENANT, "dev")


async def test_a_revoked_key_is_not_found(
    started: tuple[StoreSettings, store_service_pb2_grpc.StoreServiceStub], database_url: str
) -> None:
    _, store = started
    digest = hashlib.sha256(b"revoked key").hexdigest()
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO api_keys (key_sha256, tenant, name, revoked_at) VALUES ($1, 't', 'old', now())",
            digest,
        )
    finally:
        await connection.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store.LookupApiKey(pb.LookupApiKeyRequest(key_sha256=digest))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_started_service_ingests_records(
    started: tuple[StoreSettings, store_service_pb2_grpc.StoreServiceStub],
    js: JetStreamContext,
    database_url: str,
) -> None:
    _, store = started
    made = prediction()
    await publish(js, DEV_TENANT, made, made.name)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        assert await rows_of(pool, made) == 1
    finally:
        await pool.close()
    got = await store.GetPrediction(
        pb.GetPredictionRequest(tenant=DEV_TENANT, id=made.name.removeprefix("predictions/"))
    )
    assert got.prediction.name == made.name


async def test_start_without_a_database_url_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_STORE_DATABASE_URL", raising=False)
    service = StoreService(StoreSettings())
    service.register(grpc.aio.server())
    async with AsyncExitStack() as stack:
        with pytest.raises(ValueError, match="FERRY_STORE_DATABASE_URL"):
            await service.start(stack, Readiness.started("store"))
