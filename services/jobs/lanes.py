"""Priority lanes: one durable consumer per priority, sharing one process's in-flight budget.

``FERRY_WORK`` is a work-queue stream, so its consumers may not overlap; a single consumer on
``ferry.jobs.items.>`` would hand items over in arrival order whatever their priority. So each
priority gets its own consumer (``<consumer_name>-high`` on ``ferry.jobs.items.high``, ...) and
its own fetch loop, and the loops share the process's ``max_inflight`` through a ``Room``:

* Room is work-conserving: a lane whose consumer is empty waits in its pull and takes no turns,
  so a lone priority gets the whole budget.
* When room frees up while several lanes wait for it, it goes to them by smooth weighted
  round-robin (weights ``high:normal:low``, default 6:3:1): under a backlog high gets 60% of the
  fetches, and low still 10%, so it never starves.
* A grant is reserved while its lane fetches, so two lanes never both fetch the same free room.
* A lane whose last fetch came back empty is idle: it polls for one item, outside the budget,
  so an empty priority takes no room from a busy one while it waits in its pull, and the first
  item of a newly arrived priority is taken at once even when the budget is full. That one item
  per idle lane is all ``max_inflight`` can be exceeded by; after it the lane waits its turn.

See docs/jobs.md, "Priorities".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _LaneState:
    weight: int
    inflight: Callable[[], int]
    admitted: Callable[[], int]
    granted: int = 0
    admitted_at_grant: int = 0
    idle: bool = False
    current: int = 0
    waiter: asyncio.Future[int] | None = field(default=None, repr=False)


class Room:
    """The in-flight budget of one runner process, shared by its priority lanes.

    Args:
        capacity: most items the process runs at once (``max_inflight``).
        batch: most items one fetch asks for (``fetch_batch``).
    """

    def __init__(self, capacity: int, batch: int) -> None:
        self._capacity = capacity
        self._batch = batch
        self._lanes: dict[str, _LaneState] = {}

    def add_lane(
        self, name: str, weight: int, inflight: Callable[[], int], admitted: Callable[[], int]
    ) -> Lane:
        """Registers a lane.

        Args:
            name: the priority.
            weight: its share of contended room, relative to the other lanes' weights.
            inflight: how many items the lane runs now.
            admitted: how many items the lane ever took in (in flight plus settled): a grant
                that did not raise it was an empty fetch.
        """
        self._lanes[name] = _LaneState(weight, inflight, admitted)
        return Lane(self, name)

    def used(self) -> int:
        """Items running in every lane plus the room granted to fetches under way (an idle
        lane's one-item poll is outside the budget)."""
        return sum(lane.inflight() + (0 if lane.idle else lane.granted) for lane in self._lanes.values())

    async def _take(self, name: str) -> int:
        lane = self._lanes[name]
        if lane.granted:  # the previous fetch is over: what it brought is in lane.inflight now
            lane.idle = lane.admitted() == lane.admitted_at_grant and len(self._lanes) > 1
            lane.granted = 0
        lane.waiter = asyncio.get_running_loop().create_future()
        self.dispatch()
        try:
            return await lane.waiter
        except asyncio.CancelledError:
            if lane.waiter.done() and not lane.waiter.cancelled():
                lane.granted = 0  # granted just as we were cancelled: give it back
                self.dispatch()
            raise
        finally:
            lane.waiter = None

    def dispatch(self) -> None:
        """Lets idle lanes poll for one item, then hands free room to the other waiting lanes by
        smooth weighted round-robin until none is left."""
        for lane in self._waiting():
            if lane.idle:
                self._grant(lane, 1)
        while True:
            free = self._capacity - self.used()
            waiting = self._waiting()
            if free <= 0 or not waiting:
                return
            total = sum(lane.weight for lane in waiting)
            for lane in waiting:
                lane.current += lane.weight
            chosen = max(waiting, key=lambda lane: lane.current)
            chosen.current -= total
            self._grant(chosen, min(self._batch, free))

    def _waiting(self) -> list[_LaneState]:
        return [lane for lane in self._lanes.values() if lane.waiter is not None and not lane.waiter.done()]

    @staticmethod
    def _grant(lane: _LaneState, count: int) -> None:
        lane.granted = count
        lane.admitted_at_grant = lane.admitted()
        assert lane.waiter is not None
        lane.waiter.set_result(count)


@dataclass(frozen=True)
class Lane:
    """One priority's handle on the shared ``Room``."""

    room: Room
    name: str

    async def take(self) -> int:
        """Waits for this lane's turn at free room; returns how many items it may fetch now.

        Called before every fetch: the call also ends the grant of the previous one (whose items
        are counted in flight by then), so the grant lasts exactly while the lane fetches.
        """
        return await self.room._take(self.name)

    def freed(self) -> None:
        """Items of this lane settled: their room may go to a waiting lane."""
        self.room.dispatch()
