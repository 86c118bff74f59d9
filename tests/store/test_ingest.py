"""Ingest through real JetStream into real Postgres: no loss, no duplicates, right job counts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import pytest_asyncio
from nats.js import JetStreamContext

from ferry.jobs.v1 import job_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common.messaging import PREDICTIONS_SUBJECT, connect, ensure_streams
from services.common.tasks import spawn
from services.store.ingest import Ingestor
from tests.store.records import event, prediction, queued_job

TENANT = "ingest-tests"


@pytest_asyncio.fixture(scope="module")
async def js(nats_url: str, pool: asyncpg.Pool) -> AsyncIterator[JetStreamContext]:
    """JetStream, with an ingestor of this module's own running against the module's database."""
    async with AsyncExitStack() as stack:
        _, js = await connect(nats_url, "store-tests", stack)
        await ensure_streams(js)
        consumer = f"store-test-{uuid.uuid4().hex[:8]}"
        ingestor = Ingestor(js, pool, consumer, batch=64, fetch_timeout_s=0.05, retry_delay_s=0.1)
        task = spawn(stack, ingestor.run(await ingestor.subscribe()), "ingest")
        yield js
        assert not task.done(), task  # ingest must outlive every idle fetch and bad event
        await js.delete_consumer("FERRY_EVENTS", consumer)


async def publish(js: JetStreamContext, record: object, msg_id: str) -> None:
    await js.publish(PREDICTIONS_SUBJECT, record.SerializeToString(), headers={"Nats-Msg-Id": msg_id})  # type: ignore[attr-defined]


async def rows_with_id(pool: asyncpg.Pool, record_id: str, want: int, timeout_s: float = 15) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        count = await pool.fetchval("SELECT count(*) FROM predictions WHERE id = $1::uuid", record_id)
        if count >= want or time.monotonic() > deadline:
            return int(count)
        await asyncio.sleep(0.05)


async def job_when(store: store_service_pb2_grpc.StoreServiceStub, job_id: str, done: int) -> job_pb2.Job:
    deadline = time.monotonic() + 15
    while True:
        job = (await store.GetJob(pb.GetJobRequest(tenant=TENANT, id=job_id))).job
        if job.items_succeeded + job.items_failed >= done or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.05)


async def test_a_published_record_becomes_a_row(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    made = prediction()
    await publish(js, event(TENANT, made), made.name)
    record_id = made.name.removeprefix("predictions/")
    assert await rows_with_id(pool, record_id, 1) == 1
    row = await pool.fetchrow(
        "SELECT tenant, model, trace_id FROM predictions WHERE id = $1::uuid", record_id
    )
    assert (row["tenant"], row["model"], row["trace_id"]) == (TENANT, "efficientnet-lite0", "ab" * 16)


async def test_a_redelivered_record_makes_one_row(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    made = prediction()
    # Different message ids: JetStream's own dedup cannot help, as after its window has passed.
    await publish(js, event(TENANT, made), f"a-{made.name}")
    await publish(js, event(TENANT, made), f"b-{made.name}")
    marker = prediction()
    await publish(
        js, event(TENANT, marker), marker.name
    )  # published after both: once it is in, both were handled
    assert await rows_with_id(pool, marker.name.removeprefix("predictions/"), 1) == 1
    assert await rows_with_id(pool, made.name.removeprefix("predictions/"), 1) == 1


async def test_job_counts_each_item_once(
    js: JetStreamContext, store: store_service_pb2_grpc.StoreServiceStub
) -> None:
    job = (await store.CreateJob(pb.CreateJobRequest(tenant=TENANT, job=queued_job(3)))).job
    job_id = uuid.UUID(job.name.removeprefix("jobs/"))
    first, second, bad = prediction(job_id, 0), prediction(job_id, 1), prediction(job_id, 2, failed=True)
    await publish(js, event(TENANT, first), "1")
    running = await job_when(store, str(job_id), 1)
    assert running.state == job_pb2.JOB_STATE_RUNNING
    for msg_id, made in [("2", second), ("dup-1", first), ("3", bad), ("dup-2", second)]:
        await publish(js, event(TENANT, made), f"{job_id}-{msg_id}")
    done = await job_when(store, str(job_id), 3)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert (done.items_succeeded, done.items_failed) == (2, 1)

    listing = await store.ListPredictions(pb.ListPredictionsRequest(tenant=TENANT, job_id=str(job_id)))
    assert [p.item_index for p in listing.predictions] == [0, 1, 2]
    assert listing.predictions[2].error.message == "not an image"
    assert listing.predictions[0].classes[0].label == "espresso"


async def test_a_job_whose_items_all_fail_is_failed(
    js: JetStreamContext, store: store_service_pb2_grpc.StoreServiceStub
) -> None:
    job = (await store.CreateJob(pb.CreateJobRequest(tenant=TENANT, job=queued_job(1)))).job
    job_id = uuid.UUID(job.name.removeprefix("jobs/"))
    await publish(js, event(TENANT, prediction(job_id, 0, failed=True)), f"{job_id}-0")
    done = await job_when(store, str(job_id), 1)
    assert done.state == job_pb2.JOB_STATE_FAILED


async def test_a_cancelled_job_stays_cancelled(
    js: JetStreamContext, store: store_service_pb2_grpc.StoreServiceStub
) -> None:
    job = (await store.CreateJob(pb.CreateJobRequest(tenant=TENANT, job=queued_job(1)))).job
    job_id = uuid.UUID(job.name.removeprefix("jobs/"))
    cancelled = (await store.CancelJob(pb.CancelJobRequest(tenant=TENANT, id=str(job_id)))).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    await publish(js, event(TENANT, prediction(job_id, 0)), f"{job_id}-0")
    later = await job_when(store, str(job_id), 1)
    assert (later.state, later.items_succeeded) == (job_pb2.JOB_STATE_CANCELLED, 1)


async def test_a_malformed_event_is_dropped_and_ingest_goes_on(
    js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    await js.publish(
        PREDICTIONS_SUBJECT, b"\xff\xffnot a protobuf", headers={"Nats-Msg-Id": str(uuid.uuid4())}
    )
    made = prediction()
    await publish(js, event(TENANT, made), made.name)
    assert await rows_with_id(pool, made.name.removeprefix("predictions/"), 1) == 1


async def test_ingest_survives_fetches_that_time_out(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    # With a 2 ms window nats-py often ends a fetch with the builtin TimeoutError (its deadline
    # is spent by the no-wait probe). That once killed ingest and silently stopped every record.
    consumer = f"store-test-idle-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        ingestor = Ingestor(js, pool, consumer, batch=64, fetch_timeout_s=0.002, retry_delay_s=0.1)
        task = spawn(stack, ingestor.run(await ingestor.subscribe()), "idle-ingest")
        await asyncio.sleep(1.5)
        assert not task.done(), task
        made = prediction()
        await publish(js, event(TENANT, made), made.name)
        assert await rows_with_id(pool, made.name.removeprefix("predictions/"), 1) == 1
    await js.delete_consumer("FERRY_EVENTS", consumer)
