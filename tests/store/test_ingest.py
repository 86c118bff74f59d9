"""Ingest through real JetStream into real Postgres: no loss, no duplicates, right job counts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest_asyncio
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry.jobs.v1 import job_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common import messaging
from services.common.errors import error_from_status
from services.store import metrics
from services.store.ingest import Ingestor
from tests.store.conftest import running_ingestor
from tests.store.records import (
    create_job,
    drained,
    error_info,
    event,
    eventually,
    prediction,
    publish,
    record_id,
    rows_of,
)

TENANT = f"ingest-{uuid.uuid4().hex[:6]}"
Stub = store_service_pb2_grpc.StoreServiceStub


@pytest_asyncio.fixture(scope="module", autouse=True)
async def ingesting(js: JetStreamContext, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """This module's ingestor, writing into this module's database."""
    async with running_ingestor(js, pool) as consumer:
        yield consumer


async def new_job(store: Stub, items: int) -> uuid.UUID:
    return await create_job(store, TENANT, items)


async def settled(store: Stub, js: JetStreamContext, pool: asyncpg.Pool, job_id: uuid.UUID) -> job_pb2.Job:
    """The job once everything published so far is ingested."""
    await drained(js, pool, TENANT)
    return (await store.GetJob(pb.GetJobRequest(tenant=TENANT, id=str(job_id)))).job


async def test_a_published_record_becomes_a_row(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    made = prediction()
    await publish(js, TENANT, made, made.name)
    assert await rows_of(pool, made) == 1
    row = await pool.fetchrow(
        "SELECT tenant, model, job_id, trace_id, class_labels FROM predictions WHERE id = $1", record_id(made)
    )
    assert (row["tenant"], row["model"], row["job_id"], row["trace_id"]) == (
        TENANT,
        "efficientnet-lite0",
        None,
        "ab" * 16,
    )
    assert row["class_labels"] == ["espresso"]


async def test_a_job_items_input_name_is_a_column_read_back_with_the_record(
    js: JetStreamContext, pool: asyncpg.Pool, store: Stub
) -> None:
    job = await new_job(store, 2)
    named, inline = prediction(job, 0), prediction(job, 1)
    named.input_name = "holiday/2024/IMG_0001.jpg"
    for made in (named, inline):
        await publish(js, TENANT, made, made.name)
    await settled(store, js, pool, job)
    rows = await pool.fetch(
        "SELECT item_index, input_name FROM predictions WHERE job_id = $1 ORDER BY 1", job
    )
    assert [(r["item_index"], r["input_name"]) for r in rows] == [(0, "holiday/2024/IMG_0001.jpg"), (1, None)]
    found = await store.GetPrediction(pb.GetPredictionRequest(tenant=TENANT, id=str(record_id(named))))
    assert found.prediction.input_name == "holiday/2024/IMG_0001.jpg"


async def test_a_record_published_twice_makes_one_row(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    made = prediction()
    # Different message ids: JetStream's dedup cannot help, as for a redelivery after its window.
    await publish(js, TENANT, made, f"a-{made.name}")
    await publish(js, TENANT, made, f"b-{made.name}")
    marker = prediction()
    await publish(js, TENANT, marker, marker.name)  # once it is in, both copies were handled
    assert await rows_of(pool, marker) == 1
    assert await rows_of(pool, made) == 1


async def test_a_job_of_two_items_and_a_duplicate_succeeds_counting_each_once(
    js: JetStreamContext, pool: asyncpg.Pool, store: Stub
) -> None:
    job_id = await new_job(store, 2)
    first, second = prediction(job_id, 0), prediction(job_id, 1)
    await publish(js, TENANT, first, f"{job_id}:0")
    running = await settled(store, js, pool, job_id)
    assert (running.state, running.items_succeeded) == (job_pb2.JOB_STATE_RUNNING, 1)

    await publish(js, TENANT, second, f"{job_id}:1")
    await publish(js, TENANT, first, f"{job_id}:0:redelivered")
    done = await settled(store, js, pool, job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert not done.HasField("error")
    assert (done.items_succeeded, done.items_failed) == (2, 0)
    listing = await store.ListPredictions(pb.ListPredictionsRequest(tenant=TENANT, job_id=str(job_id)))
    assert [p.item_index for p in listing.predictions] == [0, 1]
    assert listing.predictions[0].classes[0].label == "espresso"


async def test_a_finished_jobs_state_and_error_tell_the_truth(
    js: JetStreamContext, pool: asyncpg.Pool, store: Stub
) -> None:
    mixed, hopeless = await new_job(store, 3), await new_job(store, 1)
    bad = prediction(mixed, 1, failed=True)
    for made in (prediction(mixed, 0), bad, prediction(mixed, 2), prediction(hopeless, 0, failed=True)):
        await publish(js, TENANT, made, made.name)

    partly = await settled(store, js, pool, mixed)
    assert (partly.state, partly.items_succeeded, partly.items_failed) == (
        job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
        2,
        1,
    )
    error = error_from_status(partly.error)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ITEMS_FAILED")
    assert error.message.startswith("1 of 3 items failed")
    # The failures alone, with their dead letters: not every record of a job of thousands.
    assert f"GET /v1/jobs/{mixed}/items?state=PREDICTION_STATE_FAILED" in error.message
    assert f"POST /v1/jobs/{mixed}:retry" in error.message
    assert error_info(partly.error).metadata == {
        "items_failed": "1",
        "items_total": "3",
        "last_reason": "INVALID_IMAGE",
    }

    failed = (await store.GetJob(pb.GetJobRequest(tenant=TENANT, id=str(hopeless)))).job
    assert (failed.state, failed.items_succeeded, failed.items_failed) == (job_pb2.JOB_STATE_FAILED, 0, 1)
    assert (
        error_from_status(failed.error).code == grpc.StatusCode.INVALID_ARGUMENT
    )  # a bad image, not a crash
    assert error_from_status(failed.error).message.startswith("1 of 1 items failed")

    got = (
        await store.GetPrediction(pb.GetPredictionRequest(tenant=TENANT, id=str(record_id(bad))))
    ).prediction
    assert got.error == bad.error  # the whole google.rpc.Status, ErrorInfo included
    row = await pool.fetchrow(
        "SELECT error_code, error_message, error_reason FROM predictions WHERE id = $1", record_id(bad)
    )
    assert tuple(row) == (3, "not an image", "INVALID_IMAGE")


async def test_a_cancelled_job_stays_cancelled(js: JetStreamContext, pool: asyncpg.Pool, store: Stub) -> None:
    job_id = await new_job(store, 1)
    cancelled = (await store.CancelJob(pb.CancelJobRequest(tenant=TENANT, id=str(job_id)))).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    await publish(js, TENANT, prediction(job_id, 0), f"{job_id}:0")
    later = await settled(store, js, pool, job_id)
    assert (later.state, later.items_succeeded) == (job_pb2.JOB_STATE_CANCELLED, 1)


async def test_a_record_never_moves_another_tenants_job(
    js: JetStreamContext, pool: asyncpg.Pool, store: Stub
) -> None:
    job_id = await new_job(store, 1)
    stray = prediction(job_id, 0)
    await publish(js, "someone-else", stray, stray.name)
    job = await settled(store, js, pool, job_id)
    assert (job.state, job.items_succeeded) == (job_pb2.JOB_STATE_QUEUED, 0)


async def test_an_undecodable_event_is_dropped_and_ingest_goes_on(
    js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    await js.publish(
        messaging.PREDICTIONS_SUBJECT, b"\xff\xffnot a protobuf", headers={"Nats-Msg-Id": str(uuid.uuid4())}
    )
    made = prediction()
    await publish(js, TENANT, made, made.name)
    assert await rows_of(pool, made) == 1


async def test_a_record_postgres_refuses_is_dropped_and_its_batch_lands(
    js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    refused_before = metrics.RECORDS.labels("refused")._value.get()
    poison, good = prediction(), prediction()
    poison.model = "models/nul\x00byte"  # valid protobuf, but Postgres text cannot hold NUL
    await publish(js, TENANT, poison, poison.name)
    await publish(js, TENANT, good, good.name)
    assert await rows_of(pool, good) == 1
    refused = await eventually(
        lambda: metrics.RECORDS.labels("refused")._value.get(),
        lambda n: n > refused_before,
    )
    assert refused == refused_before + 1  # terminated once, not naked round and round
    assert await pool.fetchval("SELECT count(*) FROM predictions WHERE id = $1", record_id(poison)) == 0


async def test_the_ingest_span_joins_the_publishers_trace(
    js: JetStreamContext, pool: asyncpg.Pool, spans: InMemorySpanExporter
) -> None:
    made = prediction()
    with trace.get_tracer("store-tests").start_as_current_span("gateway.publish") as publishing:
        await messaging.publish(js, messaging.PREDICTIONS_SUBJECT, event(TENANT, made), made.name)
    parent = publishing.get_span_context()
    assert await rows_of(pool, made) == 1

    found = await eventually(
        lambda: [
            s
            for s in spans.get_finished_spans()
            if s.name == "store.ingest"
            and (s.attributes or {}).get("ferry.prediction_id") == str(record_id(made))
        ],
        bool,
    )
    assert len(found) == 1
    span = found[0]
    assert span.context is not None and span.parent is not None
    assert (span.context.trace_id, span.parent.span_id) == (parent.trace_id, parent.span_id)


async def test_ingest_survives_fetches_that_time_out(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    # With a 2 ms window nats-py often ends a fetch with the builtin TimeoutError (its deadline
    # is spent by the no-wait probe). That once killed ingest and silently stopped every record.
    async with running_ingestor(js, pool, max_wait_s=0.002):
        await asyncio.sleep(1.5)
        made = prediction()
        await publish(js, TENANT, made, made.name)
        assert await rows_of(pool, made) == 1


async def test_ingest_stops_when_cancelled_even_mid_fetch(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    # nats-py's fetch can swallow a cancel that races its deadline (asyncio.wait_for on 3.11): a
    # stop request was then lost and shutdown hung. Cancel many times at random points of a 2 ms
    # fetch window; every run must end.
    consumer = f"store-test-stop-{uuid.uuid4().hex[:8]}"
    ingestor = Ingestor(js, pool, consumer, batch=8, max_wait_s=0.002, retry_delay_s=0.1)
    hung = 0
    for attempt in range(100):
        task = asyncio.create_task(ingestor.run(await ingestor.subscribe()))
        await asyncio.sleep(0.002 + (attempt % 7) * 0.0005)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:  # a hang: cancel again so the test itself can finish
            hung += 1
            task.cancel()
            await asyncio.wait({task}, timeout=5)
    await js.delete_consumer(messaging.EVENTS_STREAM, consumer)
    assert hung == 0


async def test_every_record_is_acked_once_after_its_commit(
    js: JetStreamContext, pool: asyncpg.Pool, ingesting: str
) -> None:
    # Many records, several batches of the ingestor's 64: each message is acked after its batch
    # commits, so nothing stays pending and nothing is redelivered when all goes well.
    made = [prediction() for _ in range(300)]
    for one in made:
        await publish(js, TENANT, one, one.name)
    await drained(js, pool, TENANT)
    ids = [record_id(one) for one in made]
    assert await pool.fetchval("SELECT count(*) FROM predictions WHERE id = ANY($1)", ids) == 300
    for _ in range(100):  # the last acks may still be on their way to the server
        info = await js.consumer_info(messaging.EVENTS_STREAM, ingesting)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            break
        await asyncio.sleep(0.05)
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
