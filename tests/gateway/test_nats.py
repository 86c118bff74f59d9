"""What the gateway writes to a real JetStream: job items (deduplicated) and cancellations."""

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

from devstack.infra import free_port, start_nats
from ferry.events.v1 import events_pb2
from ferry.types.v1 import types_pb2
from services.common import messaging
from services.common.errors import FerryError
from services.common.messaging import open_cancelled_bucket
from services.gateway.cancellation import CANCELLED, mark_cancelled
from services.gateway.downstream import publishing
from services.gateway.job_manager import publish_job_items
from services.gateway.publisher import Publisher


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
    for _ in range(100):
        try:
            info = await js.stream_info(messaging.EVENTS_STREAM)
            break
        except Exception:
            await asyncio.sleep(0.1)
    assert info.state.messages == 0
