"""What is written to a real JetStream: job items (deduplicated) and cancellations (both by the jobs
service's job queue), and batches of prediction records (the gateway's)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import nats
import pytest
from nats.js import JetStreamContext
from opentelemetry import trace

from devstack.infra import free_port, start_nats
from ferry.events.v1 import events_pb2
from ferry.types.v1 import types_pb2
from services.common import messaging
from services.common.downstream import publishing
from services.common.errors import FerryError
from services.common.messaging import open_cancelled_bucket
from services.common.publisher import Publisher
from services.gateway.record_batches import RecordBatcher
from services.jobs.cancellation import CANCELLED, mark_cancelled
from services.jobs.submission import publish_job_items


async def test_job_items_are_published_once_even_when_published_again(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "gateway-test", stack)
        await messaging.ensure_streams(js)
        job_id = str(uuid.uuid4())
        template = events_pb2.JobItem(tenant="acme", job_id=job_id, model="efficientnet-lite0", top_k=3)
        images = [b"first", b"second", b"third"]
        inputs = [types_pb2.Input(image=types_pb2.Image(content=i)) for i in images]
        before = (await js.stream_info(messaging.WORK_STREAM)).state.last_seq

        for _ in range(2):  # the second round is a client's retry of the same job
            await publish_job_items(Publisher(js, 5.0), template, inputs, max_inflight=2)

        after = (await js.stream_info(messaging.WORK_STREAM)).state.last_seq
        assert after - before == len(inputs)
        stored = [await js.get_msg(messaging.WORK_STREAM, seq) for seq in range(before + 1, after + 1)]
        by_id = {m.headers["Nats-Msg-Id"]: events_pb2.JobItem.FromString(m.data) for m in stored if m.headers}
        assert set(by_id) == {f"{job_id}:{i}" for i in range(len(inputs))}
        for index, image in enumerate(images):
            item = by_id[f"{job_id}:{index}"]
            assert (item.tenant, item.job_id, item.item_index, item.top_k) == ("acme", job_id, index, 3)
            assert item.input.image.content == image
        assert all(m.subject == messaging.job_items_subject() for m in stored)


async def test_cancelled_job_is_marked_in_the_bucket(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "gateway-test", stack)
        await open_cancelled_bucket(js)
        bucket = await open_cancelled_bucket(js)  # opening an existing bucket works too
        job_id = uuid.uuid4()
        await mark_cancelled(bucket, job_id, timeout_s=5.0)
        entry = await bucket.get(str(job_id))
        assert entry.value == CANCELLED


async def test_publish_on_a_lost_connection_is_unavailable(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await messaging.ensure_streams(js)
    await nc.close()
    record = events_pb2.PredictionRecorded(tenant="acme")
    with pytest.raises(FerryError) as caught:
        async with publishing("the prediction could not be recorded"):
            await messaging.publish(js, messaging.PREDICTIONS_SUBJECT, record, str(uuid.uuid4()))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "the prediction could not be recorded" in caught.value.message


class PrivateNats:
    """A nats-server of the test's own, to stop and start again on the same port and store."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._process = start_nats(self.port, root / "store", root / "logs")

    def stop(self) -> None:
        self._process.stop()

    def start(self) -> None:
        self._process = start_nats(self.port, self._root / "store", self._root / "logs")


@pytest.fixture
async def private_nats(tmp_path: Path) -> AsyncIterator[tuple[PrivateNats, JetStreamContext]]:
    server = PrivateNats(tmp_path)
    try:
        async with AsyncExitStack() as stack:
            _, js = await messaging.connect(server.url, "gateway-test", stack)
            await messaging.ensure_streams(js)
            yield server, js
    finally:
        server.stop()


async def test_publisher_rides_out_a_nats_restart_and_stores_the_message_once(
    private_nats: tuple[PrivateNats, JetStreamContext],
) -> None:
    server, js = private_nats
    publisher = Publisher(js, budget_s=20.0)
    msg_id = str(uuid.uuid4())
    record = events_pb2.PredictionRecorded(tenant="acme")
    server.stop()
    publishing_now = asyncio.create_task(publisher.publish(messaging.PREDICTIONS_SUBJECT, record, msg_id))
    await asyncio.sleep(1.0)  # publishes fail at once meanwhile; the publisher keeps trying
    assert not publishing_now.done()
    server.start()
    await publishing_now
    await publisher.publish(messaging.PREDICTIONS_SUBJECT, record, msg_id)  # a retry
    info = await js.stream_info(messaging.EVENTS_STREAM)
    assert info.state.messages == 1


async def test_publisher_gives_up_after_its_budget_and_nothing_is_stored_later(
    private_nats: tuple[PrivateNats, JetStreamContext],
) -> None:
    server, js = private_nats
    server.stop()
    with pytest.raises(FerryError) as caught:
        async with publishing("the prediction could not be recorded"):
            await Publisher(js, budget_s=1.0).publish(
                messaging.PREDICTIONS_SUBJECT, events_pb2.PredictionRecorded(tenant="acme"), "gone"
            )
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    server.start()
    # Once reconnected, nothing buffered from the failed call may be flushed into the stream.
    assert await messages_once_back(js) == 0


async def messages_once_back(js: JetStreamContext) -> int:
    """The events stream's message count, once the restarted server answers (within 10 s)."""
    for _ in range(100):
        try:
            return (await js.stream_info(messaging.EVENTS_STREAM)).state.messages
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("nats-server did not come back within 10 s")


async def stored_batches(js: JetStreamContext) -> list[events_pb2.PredictionsRecorded]:
    """Every record batch in the (test's own) events stream, in order."""
    info = await js.stream_info(messaging.EVENTS_STREAM)
    batches = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(messaging.EVENTS_STREAM, sequence)
        assert message.subject == messaging.PREDICTION_BATCHES_SUBJECT
        batches.append(events_pb2.PredictionsRecorded.FromString(message.data or b""))
    return batches


def named(index: int) -> events_pb2.PredictionRecorded:
    record = events_pb2.PredictionRecorded(tenant="acme")
    record.prediction.name = f"predictions/{index}"
    return record


async def test_records_answered_together_go_out_in_few_batches_each_once(
    private_nats: tuple[PrivateNats, JetStreamContext],
) -> None:
    _, js = private_nats
    batcher = RecordBatcher(Publisher(js, budget_s=5.0), max_records=8, max_bytes=1 << 20)
    tracer = trace.get_tracer("gateway-tests")

    async def request(index: int) -> None:
        with tracer.start_as_current_span("predict"):
            await batcher.record(named(index))

    await asyncio.gather(*(request(i) for i in range(30)))  # each returns once its batch is stored
    batches = await stored_batches(js)
    records = [r.prediction.name for b in batches for r in b.records]
    assert sorted(records) == sorted(f"predictions/{i}" for i in range(30))  # every one, once
    assert 4 <= len(batches) < 30  # batched, and none over max_records
    assert all(len(b.records) <= 8 for b in batches)
    # Each record carries its own request's trace context, for store's span.
    assert len({r.traceparent for b in batches for r in b.records}) == 30


async def test_a_batch_rides_out_a_nats_restart_and_is_stored_once(
    private_nats: tuple[PrivateNats, JetStreamContext],
) -> None:
    server, js = private_nats
    server.stop()
    batcher = RecordBatcher(Publisher(js, budget_s=20.0), max_records=256, max_bytes=1 << 20)
    waiting = [asyncio.create_task(batcher.record(named(i))) for i in range(5)]
    await asyncio.sleep(1.0)  # publishes fail at once meanwhile; the publisher keeps trying
    assert not any(task.done() for task in waiting)
    server.start()
    await asyncio.gather(*waiting)
    records = [r.prediction.name for b in await stored_batches(js) for r in b.records]
    assert sorted(records) == sorted(f"predictions/{i}" for i in range(5))


async def test_records_not_acknowledged_in_the_budget_are_unavailable_and_never_stored_later(
    private_nats: tuple[PrivateNats, JetStreamContext],
) -> None:
    server, js = private_nats
    server.stop()
    batcher = RecordBatcher(Publisher(js, budget_s=1.0), max_records=256, max_bytes=1 << 20)

    async def request(index: int) -> grpc.StatusCode:
        with pytest.raises(FerryError) as caught:
            async with publishing("the prediction could not be recorded"):
                await batcher.record(named(index))
        return caught.value.code

    assert await asyncio.gather(*(request(i) for i in range(3))) == [grpc.StatusCode.UNAVAILABLE] * 3
    await batcher.close()
    server.start()
    assert await messages_once_back(js) == 0
