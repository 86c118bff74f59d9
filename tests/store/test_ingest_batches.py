"""Batches of records (``PredictionsRecorded``, one message for many records) through real JetStream
into real Postgres: each record stored once, one bad record never holds back the rest, and a
batch redelivered (a second publish, or a store that died between commit and ack) counts nothing
twice."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common import messaging
from services.common.messaging import PullConsumer
from services.common.tasks import spawn
from services.common.tracing import inject_headers
from services.store import codec, metrics
from services.store.ingest import Ingestor, write_batch
from tests.store.conftest import running_ingestor
from tests.store.records import (
    create_job,
    drained,
    event,
    eventually,
    prediction,
    publish,
    record_id,
    rows_of,
)

TENANT = f"batches-{uuid.uuid4().hex[:6]}"
Stub = store_service_pb2_grpc.StoreServiceStub


async def publish_batch(
    js: JetStreamContext, records: list[events_pb2.PredictionRecorded], msg_id: str
) -> None:
    """Publishes ``records`` as one batch message, as the gateway does."""
    batch = events_pb2.PredictionsRecorded(records=records)
    await js.publish(
        messaging.PREDICTION_BATCHES_SUBJECT, batch.SerializeToString(), headers={"Nats-Msg-Id": msg_id}
    )


async def job_of(store: Stub, job_id: uuid.UUID) -> job_pb2.Job:
    return (await store.GetJob(pb.GetJobRequest(tenant=TENANT, id=str(job_id)))).job


@pytest_asyncio.fixture(scope="module")
async def ingesting(js: JetStreamContext, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """This module's ingestor, for the tests that need one running throughout."""
    async with running_ingestor(js, pool) as consumer:
        yield consumer


async def test_every_record_of_a_batch_becomes_a_row(
    js: JetStreamContext, pool: asyncpg.Pool, ingesting: str
) -> None:
    made = [prediction() for _ in range(5)]
    await publish_batch(js, [event(TENANT, p) for p in made], str(uuid.uuid4()))
    for p in made:
        assert await rows_of(pool, p) == 1
    labels = await pool.fetchval("SELECT class_labels FROM predictions WHERE id = $1", record_id(made[2]))
    assert labels == ["espresso"]


async def test_each_records_ingest_span_joins_its_own_requests_trace(
    js: JetStreamContext, pool: asyncpg.Pool, ingesting: str, spans: InMemorySpanExporter
) -> None:
    made = [prediction(), prediction()]
    parents = []
    records = []
    for p in made:
        with trace.get_tracer("store-tests").start_as_current_span("gateway.predict") as request:
            records.append(event(TENANT, p))
            records[-1].traceparent = inject_headers()["traceparent"]
        parents.append(request.get_span_context())
    await publish_batch(js, records, str(uuid.uuid4()))
    for p, parent in zip(made, parents, strict=True):
        assert await rows_of(pool, p) == 1
        found = await eventually(
            lambda p=p: [
                s
                for s in spans.get_finished_spans()
                if s.name == "store.ingest"
                and (s.attributes or {}).get("ferry.prediction_id") == str(record_id(p))
            ],
            bool,
        )
        assert len(found) == 1 and found[0].parent is not None and found[0].context is not None
        assert (found[0].context.trace_id, found[0].parent.span_id) == (parent.trace_id, parent.span_id)


async def test_a_malformed_record_is_dropped_and_the_rest_of_its_batch_lands(
    js: JetStreamContext, pool: asyncpg.Pool, ingesting: str
) -> None:
    malformed_before = metrics.RECORDS.labels("malformed")._value.get()
    good, bad_name, good_too = prediction(), prediction(), prediction()
    bad_name.name = "predictions/not-a-uuid"
    records = [event(TENANT, good), event(TENANT, bad_name), event("", prediction()), event(TENANT, good_too)]
    await publish_batch(js, records, str(uuid.uuid4()))
    assert await rows_of(pool, good) == 1
    assert await rows_of(pool, good_too) == 1
    assert metrics.RECORDS.labels("malformed")._value.get() == malformed_before + 2


async def test_a_record_postgres_refuses_is_dropped_and_the_rest_of_its_batch_lands(
    js: JetStreamContext, pool: asyncpg.Pool, ingesting: str
) -> None:
    refused_before = metrics.RECORDS.labels("refused")._value.get()
    poison, good = prediction(), prediction()
    poison.model = "models/nul\x00byte"  # valid protobuf, but Postgres text cannot hold NUL
    await publish_batch(js, [event(TENANT, poison), event(TENANT, good)], str(uuid.uuid4()))
    assert await rows_of(pool, good) == 1
    refused = await eventually(
        lambda: metrics.RECORDS.labels("refused")._value.get(), lambda n: n > refused_before
    )
    await drained(js, pool, TENANT)
    assert refused == refused_before + 1  # the message was settled once, not naked round and round
    assert await pool.fetchval("SELECT count(*) FROM predictions WHERE id = $1", record_id(poison)) == 0


async def test_a_batch_delivered_twice_stores_each_record_once_and_counts_it_once(
    js: JetStreamContext, pool: asyncpg.Pool, store: Stub, ingesting: str
) -> None:
    job_id = await create_job(store, TENANT, 3)
    items = [prediction(job_id, i) for i in range(3)]
    lone = prediction()
    records = [event(TENANT, p) for p in (*items, lone)]
    # Different message ids: JetStream's dedup cannot help, as for a redelivery after its window.
    await publish_batch(js, records, f"first-{uuid.uuid4()}")
    await publish_batch(js, records, f"again-{uuid.uuid4()}")
    # The same record in another batch, as a client's retry with its request_id sends it.
    await publish_batch(js, [event(TENANT, lone), event(TENANT, prediction())], str(uuid.uuid4()))
    await drained(js, pool, TENANT)
    for p in (*items, lone):
        assert await rows_of(pool, p) == 1
    job = await job_of(store, job_id)
    assert (job.state, job.items_succeeded, job.items_failed) == (job_pb2.JOB_STATE_SUCCEEDED, 3, 0)


async def test_a_store_that_dies_between_commit_and_ack_stores_and_counts_its_batch_once(
    js: JetStreamContext, pool: asyncpg.Pool, store: Stub
) -> None:
    job_id = await create_job(store, TENANT, 4)
    records = [event(TENANT, prediction(job_id, i)) for i in range(4)]
    committed = asyncio.Event()
    ours = [0]  # the batch's rows written so far: a batch met as poison is written one by one

    async def commit_then_hang(pool: asyncpg.Pool, rows: list[codec.PredictionRow]) -> int:
        written = await write_batch(pool, rows)
        ours[0] += sum(row.job_id == job_id for row in rows)  # not the stream's earlier records
        if ours[0] >= len(records):
            committed.set()
            await asyncio.Event().wait()  # killed here: committed, never acked
        return written

    name = f"store-test-crash-{uuid.uuid4().hex[:8]}"
    first = Ingestor(js, pool, name, batch=64, max_wait_s=0.05, retry_delay_s=0.1, writer=commit_then_hang)
    # A short ack wait, so the unacked batch comes back within the test (store's is 60 s).
    config = dataclasses.replace((await first.subscribe()).config, ack_wait=1.0)
    crashed = asyncio.create_task(first.run(await short_wait(js, config)))
    await publish_batch(js, records, str(uuid.uuid4()))
    await asyncio.wait_for(committed.wait(), 20)
    crashed.cancel()  # the store process dies mid-batch
    await asyncio.gather(crashed, return_exceptions=True)
    assert (await job_of(store, job_id)).items_succeeded == 4  # the rows were committed

    rewritten: list[int] = []  # what the restarted store's writes of the batch's rows added

    async def write_and_tell(pool: asyncpg.Pool, rows: list[codec.PredictionRow]) -> int:
        written = await write_batch(pool, rows)
        if any(row.job_id == job_id for row in rows):
            rewritten.append(written)
        return written

    restarted = Ingestor(js, pool, name, batch=64, max_wait_s=0.05, retry_delay_s=0.1, writer=write_and_tell)
    async with AsyncExitStack() as stack:
        spawn(stack, restarted.run(await short_wait(js, config)), "restarted ingest")
        # Redelivered to the restarted store after the ack wait, written again (no new rows), acked.
        info = await eventually(
            lambda: js.consumer_info(messaging.EVENTS_STREAM, name),
            lambda i: bool(rewritten) and i.num_ack_pending == 0 and i.num_pending == 0,
        )
    assert rewritten and sum(rewritten) == 0  # written again, nothing new (one by one if it met poison)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    for record in records:
        assert await rows_of(pool, record.prediction) == 1
    job = await job_of(store, job_id)
    assert (job.state, job.items_succeeded) == (job_pb2.JOB_STATE_SUCCEEDED, 4)
    await js.delete_consumer(messaging.EVENTS_STREAM, name)


async def short_wait(js: JetStreamContext, config: ConsumerConfig) -> PullConsumer:
    """A pull subscription on the durable consumer as ``config`` has it (store's own, ack wait aside)."""
    consumer = PullConsumer(js, messaging.EVENTS_STREAM, config, "record events")
    await consumer.subscribe()
    return consumer


async def quiet(writers: list[str], still_s: float = 0.3, budget_s: float = 30.0) -> None:
    """Returns once no batch was written for ``still_s`` (fails the test after ``budget_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    while True:
        seen = len(writers)
        await asyncio.sleep(still_s)
        if len(writers) == seen:
            return
        assert loop.time() < deadline, f"batches still written after {budget_s} s: {writers[seen:]}"


async def test_a_second_loop_pulls_only_while_there_is_a_backlog(
    js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    writers: list[str] = []  # which loop wrote each batch

    async def noted(pool: asyncpg.Pool, rows: list[codec.PredictionRow]) -> int:
        writers.append(asyncio.current_task().get_name())  # type: ignore[union-attr]
        return await write_batch(pool, rows)

    name = f"store-test-loops-{uuid.uuid4().hex[:8]}"
    ingestor = Ingestor(js, pool, name, batch=8, max_wait_s=0.05, retry_delay_s=0.1, writer=noted)
    poured = [prediction() for _ in range(200)]
    async with AsyncExitStack() as stack:
        spawn(stack, ingestor.run(await ingestor.subscribe()), "first")
        spawn(stack, ingestor.run(await ingestor.subscribe(), on_backlog_only=True), "second")
        await asyncio.sleep(0.3)  # the stream's earlier records, if any, are in
        await asyncio.gather(*(publish(js, TENANT, p, p.name) for p in poured))
        for p in poured:
            assert await rows_of(pool, p) == 1
        assert "second" in writers  # it helped with the backlog
        await quiet(writers)  # the backlog's last batches written (at load 10 they came late)
        writers.clear()
        trickled = [prediction() for _ in range(5)]
        for p in trickled:  # one at a time, each written before the next comes
            await publish(js, TENANT, p, p.name)
            assert await rows_of(pool, p) == 1
        assert set(writers) == {"first"}  # no backlog: the second loop did not pull
    for p in poured:
        assert await rows_of(pool, p) == 1
    await js.delete_consumer(messaging.EVENTS_STREAM, name)


async def test_what_a_pull_brings_after_its_fetch_returned_is_written_at_once(
    js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    """A pull's messages keep arriving after its fetch returned (its deadline passed first). A loop
    that pulls only during a backlog used to stop with such messages in hand: they waited out
    their ack wait (60 s) until JetStream sent them again (benchmarks.store: 2,000 of 10,000 rows
    committed a minute late)."""
    tenant = f"late-{uuid.uuid4().hex[:6]}"
    late = [prediction() for _ in range(300)]
    name = f"store-test-late-{uuid.uuid4().hex[:8]}"
    ingestor = Ingestor(js, pool, name, batch=1000, max_wait_s=0.05, retry_delay_s=0.1)
    consumer = await ingestor.subscribe()
    await asyncio.gather(*(publish(js, tenant, p, p.name) for p in late))
    # A fetch whose deadline passes at once: its pull request's messages all arrive after it.
    assert await consumer.fetch(1000, timeout_s=0) == []
    await asyncio.sleep(0.5)
    async with AsyncExitStack() as stack:
        # No other loop: the backlog is never seen, only what this one holds.
        spawn(stack, ingestor.run(consumer, on_backlog_only=True), "second")
        written = await eventually(
            lambda: pool.fetchval("SELECT count(*) FROM predictions WHERE tenant = $1", tenant),
            lambda n: n >= len(late),
        )
    assert written == len(late)
    info = await js.consumer_info(messaging.EVENTS_STREAM, name)
    assert info.num_redelivered == 0
    await js.delete_consumer(messaging.EVENTS_STREAM, name)
