"""The bytes of claim-checked images a runner holds at once: bounded by ``max_input_bytes``, not
only by how many items it runs (25 photos of 9.7 MB took a runner to 671 MB)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ferry.events.v1 import events_pb2
from services.common.result_stores import object_store
from services.jobs.claims import InputBudget
from tests.jobs.conftest import Harness
from tests.jobs.doubles import FailureInjectingInference
from tests.jobs.test_delivery import SUCCEEDED
from tests.jobs.test_malformed_items import item_bytes


@pytest.mark.parametrize("fetch_batch", [1, 6], ids=["items-fetched-one-by-one", "a-group-cut-in-parts"])
async def test_a_runner_holds_at_most_its_input_budget_of_images(
    harness: Harness, inference: FailureInjectingInference, fetch_batch: int
) -> None:
    bucket = await object_store(harness.js, "ferry_uploads", "test uploads", 1)
    job = uuid.uuid4()
    for index in range(6):
        name = f"acme/budget-{job}/{index}"
        await bucket.put(name, bytes([65 + index]) * 1000)
        ref = events_pb2.ObjectRef(bucket="ferry_uploads", name=name, size_bytes=1000)
        await harness.publish_raw(item_bytes(job, index, input_ref=ref))
    inference.delay_s = 0.3  # each call long enough for the others to pile up beside it
    harness.configure(fetch_batch=fetch_batch, max_inflight=8, max_input_bytes=2500)
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = await harness.records(job)
    assert sorted(r.state for r in records) == [SUCCEEDED] * 6
    # Two images of 1,000 bytes fit the budget: never more in inference at once (without it, 6).
    assert 1000 <= inference.peak_inflight_bytes <= 2000, inference.peak_inflight_bytes
    assert max(len(call.contents) for call in inference.calls) <= 2


async def test_the_budget_is_taken_in_turn_and_a_group_larger_than_it_runs_alone() -> None:
    budget = InputBudget(100)
    order: list[str] = []
    release = {name: asyncio.Event() for name in ("small", "big", "after", "huge")}

    async def run(name: str, size: int) -> None:
        async with budget.held(size):
            order.append(name)
            await release[name].wait()

    small = asyncio.create_task(run("small", 60))
    await asyncio.sleep(0)
    big = asyncio.create_task(run("big", 90))  # waits for "small"
    await asyncio.sleep(0)
    after = asyncio.create_task(run("after", 10))  # would fit now, but "big" asked first
    await asyncio.sleep(0.01)
    assert order == ["small"] and budget.used == 60
    release["small"].set()
    await asyncio.sleep(0.01)
    assert order == ["small", "big", "after"] and budget.used == 100
    release["big"].set()
    release["after"].set()
    await asyncio.gather(small, big, after)
    huge = asyncio.create_task(run("huge", 1000))  # more than all of it: alone, not for ever
    await asyncio.sleep(0.01)
    assert order[-1] == "huge" and budget.used == 100
    release["huge"].set()
    await huge
    assert budget.used == 0


async def test_a_group_cancelled_while_it_waits_gives_its_turn_to_the_next() -> None:
    budget = InputBudget(100)
    done = asyncio.Event()

    async def hold(size: int) -> None:
        async with budget.held(size):
            await done.wait()

    first = asyncio.create_task(hold(80))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(hold(50))  # waits for the first
    await asyncio.sleep(0)
    behind = asyncio.create_task(hold(20))  # fits beside the first, but waits its turn
    await asyncio.sleep(0.01)
    assert budget.used == 80
    waiting.cancel()
    await asyncio.sleep(0.01)
    assert budget.used == 100  # "behind" holds its bytes: not held up by the cancelled one
    done.set()
    await asyncio.gather(first, behind)
    assert waiting.cancelled() and budget.used == 0
