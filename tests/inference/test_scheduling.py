"""Scheduling in the batcher: idle models run at once, priorities with aging, bounds, deadlines.

The run functions here are plain in-process functions (the batcher's contract is "a callable that
maps a batch to its outputs"); a gate holds the worker inside one forward pass so that a backlog
builds up exactly as the test lays it out. No assertion depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

import pytest
from google.rpc import error_details_pb2

from ferry.types.v1 import types_pb2
from services.common.errors import DeadlineExceeded, ResourceExhausted
from services.inference.batcher import Batched, DynamicBatcher
from services.inference.decoding import DecodeQueue
from services.inference.scheduling import AgingQueue, Priority, priority_from_proto

BLOCK = "block"


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class GatedModel:
    """Records every batch; a batch holding BLOCK waits inside the run until ``release()``."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._entered = threading.Event()
        self._gate = threading.Event()

    def run(self, items: Sequence[str]) -> list[str]:
        if BLOCK in items:
            self._entered.set()
            self._gate.wait(timeout=30)
        self.batches.append(list(items))
        return [item.upper() for item in items]

    async def blocked(self) -> None:
        """Waits until the worker is inside the BLOCK batch."""
        assert await asyncio.to_thread(self._entered.wait, 30)

    def release(self) -> None:
        self._gate.set()

    @property
    def order(self) -> list[str]:
        return [item for batch in self.batches for item in batch if item != BLOCK]


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def busy(batcher: DynamicBatcher[str, str], model: GatedModel) -> asyncio.Future[Batched[str]]:
    """Starts a BLOCK item and returns once the worker is stuck in it."""
    blocking = asyncio.ensure_future(batcher.submit(BLOCK))
    await model.blocked()
    return blocking


async def test_a_run_with_the_wrong_output_count_fails_its_batch_and_the_next_call_works(
    stack: AsyncExitStack,
) -> None:
    def run(items: Sequence[int]) -> list[int]:
        return [] if 13 in items else [item * 2 for item in items]

    batcher: DynamicBatcher[int, int] = DynamicBatcher("miscount", run, max_batch_size=4)
    await batcher.start(stack)
    with pytest.raises(RuntimeError, match="returned 0 outputs for a batch of 1"):
        await asyncio.wait_for(batcher.submit(13), 30)
    assert (await asyncio.wait_for(batcher.submit(21), 30)).output == 42


async def test_an_idle_model_runs_a_lone_item_without_waiting_for_company(stack: AsyncExitStack) -> None:
    seen: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        seen.append(len(items))
        return list(items)

    # An hour of batching delay: if the worker waited for the batch to fill, this would hang.
    batcher: DynamicBatcher[int, int] = DynamicBatcher("idle", run, max_batch_size=8, max_delay_s=3600)
    await batcher.start(stack)
    result = await asyncio.wait_for(batcher.submit(1), 30)
    assert (result.output, result.batch_size, seen) == (1, 1, [1])


async def test_items_arriving_during_a_forward_pass_form_the_next_batch(stack: AsyncExitStack) -> None:
    model = GatedModel()
    batcher: DynamicBatcher[str, str] = DynamicBatcher("continuous", model.run, max_batch_size=8)
    await batcher.start(stack)
    blocking = await busy(batcher, model)
    waiting = [asyncio.ensure_future(batcher.submit(name)) for name in ("a", "b", "c")]
    await asyncio.sleep(0)
    model.release()
    results = await asyncio.wait_for(asyncio.gather(blocking, *waiting), 30)
    assert model.batches == [[BLOCK], ["a", "b", "c"]]
    assert [r.batch_size for r in results] == [1, 3, 3, 3]


async def test_high_priority_runs_before_low_queued_earlier(stack: AsyncExitStack) -> None:
    model = GatedModel()
    batcher: DynamicBatcher[str, str] = DynamicBatcher("priority", model.run, max_batch_size=1)
    await batcher.start(stack)
    blocking = await busy(batcher, model)
    low = [asyncio.ensure_future(batcher.submit(f"low{i}", Priority.LOW)) for i in range(3)]
    normal = asyncio.ensure_future(batcher.submit("normal"))
    high = [asyncio.ensure_future(batcher.submit(f"high{i}", Priority.HIGH)) for i in range(2)]
    await asyncio.sleep(0)
    model.release()
    await asyncio.wait_for(asyncio.gather(blocking, *low, normal, *high), 30)
    assert model.order == ["high0", "high1", "normal", "low0", "low1", "low2"]


async def test_a_caller_waiting_goes_before_job_items_of_its_priority_queued_earlier(
    stack: AsyncExitStack,
) -> None:
    model = GatedModel()
    batcher: DynamicBatcher[str, str] = DynamicBatcher("jobs", model.run, max_batch_size=1)
    await batcher.start(stack)
    blocking = await busy(batcher, model)
    normal, low = types_pb2.PRIORITY_NORMAL, types_pb2.PRIORITY_LOW
    queued = [
        ("normal job item", priority_from_proto(normal, job_item=True)),
        ("low job item", priority_from_proto(low, job_item=True)),
        ("low call", priority_from_proto(low)),
        ("normal call", priority_from_proto(normal)),
    ]
    futures = [asyncio.ensure_future(batcher.submit(item, priority)) for item, priority in queued]
    await asyncio.sleep(0)
    model.release()
    await asyncio.wait_for(asyncio.gather(blocking, *futures), 30)
    # A normal job's items rank with low calls (arrival order among them); a low job's come last.
    assert model.order == ["normal call", "normal job item", "low call", "low job item"]


async def test_low_priority_ages_past_a_constant_stream_of_high(stack: AsyncExitStack) -> None:
    clock = FakeClock()
    model = GatedModel()
    batcher: DynamicBatcher[str, str] = DynamicBatcher(
        "aging", model.run, max_batch_size=1, aging_s=1.0, clock=clock
    )
    await batcher.start(stack)
    blocking = await busy(batcher, model)
    low = asyncio.ensure_future(batcher.submit("low", Priority.LOW))
    await asyncio.sleep(0)
    high = []
    for tick in range(1, 11):  # a HIGH item every half second for five seconds
        clock.now += 0.5
        high.append(asyncio.ensure_future(batcher.submit(f"high@{tick * 0.5:g}", Priority.HIGH)))
        await asyncio.sleep(0)
    model.release()
    await asyncio.wait_for(asyncio.gather(blocking, low, *high), 30)
    # LOW's head start is 2 x aging: HIGH items that arrived within 2 s after it go first, and
    # every later one waits behind it, however many keep coming.
    assert model.order[:4] == ["high@0.5", "high@1", "high@1.5", "low"]


def test_the_aging_rule_orders_by_arrival_plus_handicap() -> None:
    clock = FakeClock()
    queue: AgingQueue[str] = AgingQueue(aging_s=1.0, clock=clock)
    queue.push("low@0", Priority.LOW)  # key 2
    clock.now += 0.5
    queue.push("normal@0.5", Priority.NORMAL)  # key 1.5
    clock.now += 1.0
    queue.push("high@1.5", Priority.HIGH)  # key 1.5, after normal (arrived first)
    clock.now += 1.0
    queue.push("high@2.5", Priority.HIGH)  # key 2.5
    assert [queue.pop() for _ in range(len(queue))] == ["normal@0.5", "high@1.5", "low@0", "high@2.5"]


async def test_a_full_queue_refuses_at_once_with_retry_advice(stack: AsyncExitStack) -> None:
    model = GatedModel()
    batcher: DynamicBatcher[str, str] = DynamicBatcher("bounded", model.run, max_batch_size=1, max_queue=2)
    await batcher.start(stack)
    blocking = await busy(batcher, model)
    queued = [asyncio.ensure_future(batcher.submit(name)) for name in ("a", "b")]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted) as refused:
        await batcher.submit("c")  # raises without waiting: the worker is still blocked
    assert refused.value.reason == "QUEUE_FULL"
    assert "limit is 2" in refused.value.message and "FERRY_INFERENCE_MAX_QUEUE" in refused.value.message
    retry = error_details_pb2.RetryInfo()
    assert refused.value.to_status().details[1].Unpack(retry) and retry.retry_delay.ToNanoseconds() > 0
    # A caller that gives up frees its place at once.
    queued[0].cancel()
    await asyncio.sleep(0)
    accepted = asyncio.ensure_future(batcher.submit("d"))
    await asyncio.sleep(0)
    model.release()
    await asyncio.wait_for(asyncio.gather(blocking, queued[1], accepted), 30)
    assert model.order == ["b", "d"]


async def test_an_item_whose_deadline_passed_in_the_queue_is_dropped_before_compute(
    stack: AsyncExitStack,
) -> None:
    clock = FakeClock()
    model = GatedModel()
    batcher: DynamicBatcher[str, str] = DynamicBatcher(
        "deadlines", model.run, max_batch_size=8, max_queue=1, clock=clock
    )
    await batcher.start(stack)
    blocking = await busy(batcher, model)
    late = asyncio.ensure_future(batcher.submit("late", deadline=clock.now + 1))
    await asyncio.sleep(0)
    clock.now += 2
    # The expired item does not count against the bound either.
    in_time = asyncio.ensure_future(batcher.submit("in-time", deadline=clock.now + 10))
    await asyncio.sleep(0)
    model.release()
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        await asyncio.wait_for(late, 30)
    assert (await asyncio.wait_for(in_time, 30)).output == "IN-TIME"
    await blocking
    assert model.order == ["in-time"]


async def test_decoding_follows_priorities_too(stack: AsyncExitStack) -> None:
    decoder = DecodeQueue(threads=1, aging_s=60)
    await decoder.start(stack)
    entered, gate = threading.Event(), threading.Event()
    order: list[str] = []

    def hold() -> str:
        entered.set()
        gate.wait(timeout=30)
        return "held"

    def decode(name: str) -> str:
        order.append(name)
        return name

    holding = asyncio.ensure_future(decoder.run(hold))
    assert await asyncio.to_thread(entered.wait, 30)
    # A job's heavy backlog queued first, then a synchronous call's input.
    job = [asyncio.ensure_future(decoder.run(lambda i=i: decode(f"job{i}"), Priority.LOW)) for i in range(4)]
    sync = asyncio.ensure_future(decoder.run(lambda: decode("sync")))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(asyncio.gather(holding, *job, sync), 30)
    assert order == ["sync", "job0", "job1", "job2", "job3"]
