"""A Postgres outage, on a Postgres of each test's own that is stopped and started again.

Records are delayed and none is lost; store reports NOT_SERVING and callers get UNAVAILABLE (never
INTERNAL) until it is back; and the outage is logged once, not once per attempt.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from nats.js import JetStreamContext

from devstack.infra import Postgres
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common.messaging import EVENTS_STREAM
from services.common.readiness import Readiness
from services.store.migrate import migrate
from services.store.service import SERVICE_NAME, StoreService
from services.store.servicer import StoreServicer
from services.store.settings import StoreSettings
from tests.store.conftest import running_ingestor, serving
from tests.store.records import error_info, error_of, eventually, prediction, publish, rows_of

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Stub = store_service_pb2_grpc.StoreServiceStub


def outage_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    """What ``logger`` said about Postgres going away and coming back."""
    return [r.getMessage() for r in caplog.records if r.name == logger and "Postgres is" in r.getMessage()]


async def test_records_published_while_postgres_is_down_land_when_it_is_back(
    js: JetStreamContext, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.store")
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
            # ... and again: a second failed write, which must not be logged a second time.
            delivered = info.delivered.consumer_seq
            again = await eventually(
                lambda: js.consumer_info(EVENTS_STREAM, consumer),
                lambda i: i.delivered.consumer_seq > delivered,
            )
            assert again.delivered.consumer_seq > delivered

            server = Postgres(data_dir)  # the same data directory: the same database
            assert await rows_of(pool, made) == 1
    finally:
        await pool.close()
        server.stop()
    down, back = outage_lines(caplog, "services.store.ingest")  # many failed writes, two lines
    assert "unreachable" in down
    redelivered = re.search(r"(\d+) record batches redelivered meanwhile", back)
    assert redelivered is not None and int(redelivered[1]) >= 2, back


@asynccontextmanager
async def gated_store(
    database_url: str, nats_url: str, js: JetStreamContext
) -> AsyncIterator[tuple[Stub, health_pb2_grpc.HealthStub]]:
    """StoreService started as run_service starts it: behind the readiness gate, health mirroring it."""
    settings = StoreSettings(
        database_url=database_url, nats_url=nats_url, consumer_name=f"store-test-{uuid.uuid4().hex[:10]}"
    )
    service = StoreService(settings)
    health_servicer = health.aio.HealthServicer()
    readiness = Readiness("store", health_servicer, ["", SERVICE_NAME])

    def register(server: grpc.aio.Server) -> None:
        service.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    async with AsyncExitStack() as stack:
        channel = await stack.enter_async_context(serving(register, readiness))
        await service.start(stack, readiness)
        await readiness.mark_started()
        yield Stub(channel), health_pb2_grpc.HealthStub(channel)
    await js.delete_consumer(EVENTS_STREAM, settings.consumer_name)


@asynccontextmanager
async def ungated_store(database_url: str) -> AsyncIterator[Stub]:
    """A store servicer with no readiness gate in front: its calls reach the pool whatever happens.

    It stands for the moment between Postgres going away and the readiness probe noticing.
    """
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        servicer = StoreServicer()
        servicer.bind(pool)
        async with serving(
            lambda s: store_service_pb2_grpc.add_StoreServiceServicer_to_server(servicer, s)
        ) as channel:
            yield Stub(channel)
    finally:
        await pool.close()


async def health_of(stub: health_pb2_grpc.HealthStub) -> int:
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    return int(answer.status)


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a failed call carries, with its details."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # an aio error is a call too
    assert status is not None, error
    return status


def retry_delay_s(status: status_pb2.Status) -> float:
    """The RetryInfo advice of a failed call."""
    info = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(info) for detail in status.details), status
    return info.retry_delay.ToTimedelta().total_seconds()


async def test_store_is_not_serving_and_answers_unavailable_while_postgres_is_down(
    nats_url: str,
    js: JetStreamContext,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.store")
    data_dir = Path(tmp_path_factory.mktemp("pgrpc"))
    server = Postgres(data_dir)
    unknown = pb.GetJobRequest(tenant="t", id=str(uuid.uuid4()))
    try:
        async with gated_store(server.uri, nats_url, js) as (store, health_stub):  # it migrates
            async with ungated_store(server.uri) as direct:
                assert await health_of(health_stub) == SERVING
                server.stop()
                assert (
                    await eventually(lambda: health_of(health_stub), lambda s: s == NOT_SERVING)
                    == NOT_SERVING
                )
                turned_away = await error_of(store.GetJob(unknown))  # by the gate, before any query
                assert turned_away.code() == grpc.StatusCode.UNAVAILABLE
                assert error_info(status_of(turned_away)).reason == "NOT_READY"

                for _ in range(3):
                    error = await error_of(direct.GetJob(unknown))
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()  # not INTERNAL
                assert error_info(status_of(error)).reason == "DATABASE_UNAVAILABLE"
                assert 1 <= retry_delay_s(status_of(error)) <= 2

                server = Postgres(data_dir)
                assert await eventually(lambda: health_of(health_stub), lambda s: s == SERVING) == SERVING
                for stub in (store, direct):  # both answer again: an unknown job is NOT_FOUND
                    assert (await error_of(stub.GetJob(unknown))).code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()
    down, back = outage_lines(caplog, "services.store.servicer")  # three failed calls, two lines
    assert "unreachable" in down and "3 calls answered UNAVAILABLE meanwhile" in back
    assert not [r for r in caplog.records if r.exc_info], "an outage is no reason for a traceback"
