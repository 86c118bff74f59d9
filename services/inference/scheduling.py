"""Priority queues with aging, shared by the decode queue and every model's batching queue.

The rule, in one line: an item's *key* is the time it arrived plus a handicap that grows with
lower priority (HIGH 0, NORMAL ``aging_s``, LOW ``2 * aging_s``; a batch job's items one step
more than a waiting caller's of the same priority), and the smallest key runs first. So a HIGH
item overtakes a LOW one only if it arrived less than ``2 * aging_s`` after it: once a LOW item
has waited that long, nothing that arrives later goes before it, and under any constant load of
higher priorities it waits at most ``2 * aging_s`` more than in FIFO order.
Its effective priority improves linearly with the time it waits, yet the key never changes, so a
plain heap keeps the order.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.common import priorities
from services.common.errors import InvalidArgument

T = TypeVar("T")


class Priority(enum.IntEnum):
    """How urgently an item runs; the value is its handicap in units of the aging time."""

    HIGH = 0
    NORMAL = 1
    LOW = 2
    BACKGROUND = 3
    """A low-priority batch job's items: behind every call a caller waits on."""


def priority_from_proto(value: int, job_item: bool = False) -> Priority:
    """Maps ``ferry.types.v1.Priority`` to a Priority (unspecified is NORMAL); a batch job's items
    (``job_item``) one step lower, so a caller waiting at the same priority goes first while a
    bulk job fills the queues, and aging still bounds how long the items wait.

    Raises:
        InvalidArgument: For a number the enum does not define.
    """
    try:
        return Priority(priorities.of_proto(value).handicap + job_item)
    except KeyError:
        raise InvalidArgument(
            f"priority is {value}; use PRIORITY_HIGH, PRIORITY_NORMAL or PRIORITY_LOW "
            "(or leave it unset for normal)",
            "INVALID_PRIORITY",
            {"priority": str(value)},
        ) from None


@dataclass(order=True)
class _Entry(Generic[T]):
    key: float
    seq: int
    value: T = field(compare=False)


class AgingQueue(Generic[T]):
    """A priority queue whose order follows the module's aging rule.

    Args:
        aging_s: Handicap per priority step, in seconds of the clock.
        clock: Monotonic time in seconds (injectable for tests).
    """

    def __init__(self, aging_s: float, clock: Callable[[], float]) -> None:
        self._aging_s = aging_s
        self._clock = clock
        self._heap: list[_Entry[T]] = []
        self._seq = itertools.count()  # FIFO among equal keys

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[T]:
        return (entry.value for entry in self._heap)

    def push(self, value: T, priority: Priority) -> None:
        """Queues ``value``; it arrived now."""
        key = self._clock() + int(priority) * self._aging_s
        heapq.heappush(self._heap, _Entry(key, next(self._seq), value))

    def pop(self) -> T:
        """Removes and returns the item to run next. Raises IndexError when empty."""
        return heapq.heappop(self._heap).value

    def remove_if(self, dead: Callable[[T], bool]) -> list[T]:
        """Removes and returns every item for which ``dead`` is true (O(n); called rarely)."""
        kept: list[_Entry[T]] = []
        removed: list[T] = []
        for entry in self._heap:
            if dead(entry.value):
                removed.append(entry.value)
            else:
                kept.append(entry)
        if removed:
            heapq.heapify(kept)
            self._heap = kept
        return removed
