"""messaging.PullConsumer, the pull loop the jobs runner and store's ingest share, on a real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.common.messaging import PullConsumer, connect
from services.common.readiness import Readiness


@dataclass
class Stream:
    """A stream of this test's own, so no other test's messages or consumers meet these."""

    js: JetStreamContext
    name: str
    subject: str

    def consumer(self, readiness: Readiness | None = None) -> PullConsumer:
        config = ConsumerConfig(
            durable_name=f"pull-test-{uuid.uuid4().hex[:8]}",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            filter_subject=self.subject,
        )
        return PullConsumer(self.js, self.name, config, "test messages", readiness)

    async def publish(self, count: int, first: int = 0) -> None:
        for n in range(first, first + count):
            await self.js.publish(self.subject, str(n).encode())


@pytest_asyncio.fixture
async def stream(nats_url: str) -> AsyncIterator[Stream]:
    async with AsyncExitStack() as stack:
        _, js = await connect(nats_url, "pull-consumer-tests", stack)
        token = uuid.uuid4().hex[:8]
        name = f"PULL_TEST_{token}"
        await js.add_stream(StreamConfig(name=name, subjects=[f"pulltest.{token}"]))
        yield Stream(js, name, f"pulltest.{token}")
        await js.delete_stream(name)


async def test_fetches_every_message_once_in_order_at_most_a_batch_at_a_time(stream: Stream) -> None:
    await stream.publish(250)
    consumer = stream.consumer()
    await consumer.subscribe()
    seen: list[int] = []
    sizes: list[int] = []
    for _ in range(50):
        batch = await consumer.fetch(100, timeout_s=1.0)
        sizes.append(len(batch))
        seen.extend(int(m.data) for m in batch)
        for m in batch:
            await m.ack()
        if len(seen) >= 250:
            break
    assert seen == list(range(250))
    assert max(sizes) <= 100
    assert await consumer.fetch(100, timeout_s=0.2) == []  # nothing left, nothing twice
    await consumer.close()


async def test_an_idle_fetch_takes_a_message_published_while_it_waits(stream: Stream) -> None:
    consumer = stream.consumer()
    await consumer.subscribe()
    waiting = asyncio.create_task(consumer.fetch(10, timeout_s=1.0))
    await asyncio.sleep(0.2)
    await stream.publish(1, first=7)
    assert [int(m.data) for m in await waiting] == [7]
    await consumer.close()


async def test_an_idle_fetch_hands_out_the_first_message_without_waiting_out_its_timeout(
    stream: Stream,
) -> None:
    # A lone job item or expansion event once waited the whole timeout (a second) for a batch that
    # never filled, on every job. The deadline here is far beyond any load's scheduling delay.
    consumer = stream.consumer()
    await consumer.subscribe()
    waiting = asyncio.create_task(consumer.fetch(10, timeout_s=60.0))
    await asyncio.sleep(0.2)
    await stream.publish(1, first=7)
    assert [int(m.data) for m in await asyncio.wait_for(waiting, timeout=30.0)] == [7]
    await consumer.close()


async def test_a_filling_fetch_gathers_what_comes_within_its_window(stream: Stream) -> None:
    consumer = stream.consumer()
    await consumer.subscribe()
    waiting = asyncio.create_task(consumer.fetch(3, timeout_s=60.0, fill=True))
    await asyncio.sleep(0.2)
    await stream.publish(1)
    await asyncio.sleep(0.2)
    await stream.publish(2, first=1)
    assert [int(m.data) for m in await waiting] == [0, 1, 2]  # one batch: it waited for the rest
    await consumer.close()


async def test_naked_messages_come_back_and_acked_ones_do_not(stream: Stream) -> None:
    await stream.publish(10)
    consumer = stream.consumer()
    await consumer.subscribe()
    first = await consumer.fetch(10, timeout_s=2.0)
    assert len(first) == 10
    for m in first[:6]:
        await m.ack()
    for m in first[6:]:
        await m.nak()
    again: list[Msg] = []
    for _ in range(20):  # JetStream applies the naks on its own time: take them as they come
        again += await consumer.fetch(10, timeout_s=0.5)
        if len(again) >= 4:
            break
    assert sorted(int(m.data) for m in again) == [6, 7, 8, 9]
    assert {m.metadata.num_delivered for m in again} == {2}
    for m in again:
        await m.ack()
    assert await consumer.fetch(10, timeout_s=0.3) == []  # the acked ones never came back
    await consumer.close()


async def test_next_batch_recreates_a_consumer_deleted_under_it(stream: Stream) -> None:
    consumer = stream.consumer()
    await consumer.subscribe()
    await stream.js.delete_consumer(stream.name, consumer.name)
    await stream.publish(3)
    got: list[int] = []
    for _ in range(10):  # the first pulls fail (logged, paused) until the consumer is back
        got.extend(int(m.data) for m in await consumer.next_batch(10, timeout_s=0.5))
        if len(got) == 3:
            break
    assert got == [0, 1, 2]
    await consumer.close()


async def test_after_close_another_subscription_takes_up_where_it_stopped(stream: Stream) -> None:
    await stream.publish(5)
    consumer = stream.consumer()
    await consumer.subscribe()
    taken = await consumer.fetch(2, timeout_s=2.0)
    for m in taken:
        await m.ack()
    await consumer.close()
    again = PullConsumer(stream.js, stream.name, consumer.config, "test messages")
    await again.subscribe()
    assert [int(m.data) for m in await again.fetch(10, timeout_s=2.0)] == [2, 3, 4]
    await again.close()


async def test_next_batch_always_ends_when_cancelled_mid_fetch(stream: Stream) -> None:
    # nats-py's fetch could swallow a cancel that raced its deadline (asyncio.wait_for on 3.11),
    # and shutdown then hung on the loop. Cancel at many points of a 2 ms fetch window.
    consumer = stream.consumer()
    await consumer.subscribe()

    async def loop() -> None:
        while True:
            await consumer.next_batch(8, timeout_s=0.002)

    hung = 0
    for attempt in range(60):
        task = asyncio.create_task(loop())
        await asyncio.sleep(0.002 + (attempt % 7) * 0.0005)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            hung += 1
            task.cancel()
            await asyncio.wait({task}, timeout=5)
    await consumer.close()
    assert hung == 0


async def test_until_ready_waits_while_the_service_is_not_serving(stream: Stream) -> None:
    readiness = Readiness.started("test")
    await readiness.set_dependency("inference", "down for the test")
    consumer = stream.consumer(readiness)
    waiting = asyncio.create_task(consumer.until_ready())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await readiness.set_dependency("inference", "")
    await asyncio.wait_for(waiting, timeout=5)


async def test_fetch_refuses_a_batch_below_one(stream: Stream) -> None:
    consumer = stream.consumer()
    await consumer.subscribe()
    with pytest.raises(ValueError, match="batch"):
        await consumer.fetch(0, timeout_s=0.1)
    await consumer.close()
