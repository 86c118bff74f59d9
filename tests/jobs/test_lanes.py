"""The shared in-flight budget of priority lanes (services/jobs/lanes.py), without NATS."""

from __future__ import annotations

import asyncio
from collections import Counter

from services.jobs.lanes import Room


class FakeLane:
    """A lane's counters as a runner keeps them: items in flight and items settled."""

    def __init__(self, room: Room, name: str, weight: int) -> None:
        self.inflight = 0
        self.settled = 0
        self.lane = room.add_lane(
            name, weight, inflight=lambda: self.inflight, admitted=lambda: self.inflight + self.settled
        )

    def fetched(self, n: int) -> None:
        self.inflight += n

    def finish(self, n: int) -> None:
        self.inflight -= n
        self.settled += n
        self.lane.freed()


async def test_a_lone_lane_gets_batches_up_to_the_capacity() -> None:
    room = Room(capacity=10, batch=4)
    lane = FakeLane(room, "normal", 3)
    assert await lane.lane.take() == 4
    lane.fetched(4)
    assert await lane.lane.take() == 4
    lane.fetched(4)
    assert await lane.lane.take() == 2  # only 2 left under the capacity
    lane.fetched(2)
    waiting = asyncio.create_task(lane.lane.take())
    await asyncio.sleep(0)
    assert not waiting.done()  # full: waits for an item to settle
    lane.finish(3)
    assert await waiting == 3


async def test_contended_room_goes_to_lanes_by_weight_and_low_still_gets_some() -> None:
    room = Room(capacity=1, batch=1)
    lanes = {name: FakeLane(room, name, weight) for name, weight in (("high", 6), ("normal", 3), ("low", 1))}
    grants: Counter[str] = Counter()
    holder = lanes["high"]
    assert await holder.lane.take() == 1
    holder.fetched(1)
    for _ in range(100):
        waits = {
            name: asyncio.create_task(lane.lane.take()) for name, lane in lanes.items() if lane is not holder
        }
        waits[holder.lane.name] = asyncio.create_task(holder.lane.take())
        await asyncio.sleep(0)
        holder.finish(1)  # one slot frees up while every lane waits for it
        await asyncio.sleep(0)
        winners = [name for name, task in waits.items() if task.done()]
        assert len(winners) == 1
        holder = lanes[winners[0]]
        holder.fetched(1)
        grants[holder.lane.name] += 1
        for task in waits.values():
            task.cancel()
        await asyncio.gather(*waits.values(), return_exceptions=True)
    assert grants == {"high": 60, "normal": 30, "low": 10}


async def test_a_lane_whose_fetch_came_back_empty_polls_for_one_item_outside_the_budget() -> None:
    room = Room(capacity=8, batch=4)
    busy, idle = FakeLane(room, "low", 1), FakeLane(room, "high", 6)
    assert await idle.lane.take() == 4  # first pull: a whole batch, reserved
    assert await idle.lane.take() == 1  # it brought nothing: now it polls for one item
    assert await busy.lane.take() == 4
    busy.fetched(4)
    assert await busy.lane.take() == 4  # the idle lane's poll takes no room from the busy one
    busy.fetched(4)
    busy_waits = asyncio.create_task(busy.lane.take())  # the budget is full
    assert await idle.lane.take() == 1  # yet an idle lane still polls
    idle.fetched(1)  # an item arrived: 9 running, one over the budget, once
    idle_waits = asyncio.create_task(idle.lane.take())
    await asyncio.sleep(0)
    assert not idle_waits.done()  # no longer idle: it waits its turn like any lane
    busy.finish(2)
    assert await idle_waits == 1  # high's turn: weight 6 against 1
    assert not busy_waits.done()
    busy_waits.cancel()
