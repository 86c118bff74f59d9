"""Claim checks: a job item whose image is kept in the Object Store (``JobItem.input_ref``).

Work messages and dead letters carry the reference, never the bytes, so NATS's memory and
JetStream's disk grow with the number of items, not their size; the runner reads an item's
image only while it runs it, ``max_input_bytes`` of them at most at once (``InputBudget``):
``max_inflight`` items alone bound their count, not their size (25 images of 9.7 MB took a
runner to 671 MB, past the chart's 512 Mi limit).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import grpc
from google.rpc import status_pb2
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ferry.events.v1 import events_pb2
from ferry.types.v1 import types_pb2
from services.common import objects
from services.common.errors import status_to_proto

T = TypeVar("T")


class ClaimError(Exception):
    """An item's referenced input could not be read; ``status`` says why, ``transient`` whether
    a later attempt may read it (NATS unreachable) or never will (the object expired)."""

    def __init__(self, status: status_pb2.Status, transient: bool) -> None:
        super().__init__(status.message)
        self.status = status
        self.transient = transient


class ClaimChecks:
    """Reads items' referenced inputs from the Object Store buckets they name."""

    def __init__(self, js: JetStreamContext, timeout_s: float) -> None:
        self._js = js
        self._timeout_s = timeout_s
        self._buckets: dict[str, ObjectStore] = {}

    async def input_of(self, item: events_pb2.JobItem) -> types_pb2.Input:
        """The item's input: its own, or an image of its referenced object's bytes.

        Raises:
            ClaimError: the object is gone (INPUT_EXPIRED) or NATS did not answer (transient).
        """
        if not item.HasField("input_ref"):
            return item.input
        ref = item.input_ref
        try:
            async with asyncio.timeout(self._timeout_s):
                if ref.bucket not in self._buckets:
                    self._buckets[ref.bucket] = await self._js.object_store(ref.bucket)
                found = await objects.read(self._js, ref.bucket, self._buckets[ref.bucket], ref.name)
        except (ObjectNotFoundError, NotFoundError, BucketNotFoundError):
            raise ClaimError(
                status_to_proto(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"item {item.item_index}'s image ({ref.name} in {ref.bucket}) is no longer kept "
                    "(uploads are kept 7 days); upload it again and submit a new job",
                    "INPUT_EXPIRED",
                ),
                transient=False,
            ) from None
        except (NatsError, TimeoutError) as err:
            status = status_to_proto(
                grpc.StatusCode.UNAVAILABLE,
                f"reading item {item.item_index}'s image from {ref.bucket} failed: {err!r}",
                "EVENTS_UNAVAILABLE",
            )
            raise ClaimError(status, transient=True) from None
        return types_pb2.Input(image=types_pb2.Image(content=found))


class InputBudget:
    """Bytes of referenced inputs (images read from the Object Store) a runner holds at once.

    A group of items (a ``parts`` of a fetch) takes its images' sizes (their references say them)
    before reading any, all at once, so groups waiting for each other's bytes cannot deadlock;
    groups get the bytes in the order they asked (a group of big photos is not passed for ever by
    small ones); one image larger than the whole budget runs alone.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def held(self, size: int) -> AsyncIterator[None]:
        """Holds ``size`` bytes (at most the capacity) for the block, waiting for room first."""
        size = min(size, self.capacity)
        if self._waiting or self.used + size > self.capacity:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting = (size, turn)
            self._waiting.append(waiting)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release(size)  # granted as it was cancelled
                else:
                    self._waiting.remove(waiting)
                    self._grant()  # it may have held up the ones behind it
                raise
        else:
            self.used += size
        try:
            yield
        finally:
            self._release(size)

    def parts(self, items: Sequence[T], size_of: Callable[[T], int]) -> list[tuple[list[T], int]]:
        """``items`` in order, cut into parts (with their sizes) that each fit the budget: a fetched
        group of 8 photos of 10 MiB is more than a budget of a few photos; one item larger than
        the whole budget is a part of its own."""
        parts: list[tuple[list[T], int]] = []
        part: list[T] = []
        total = 0
        for item in items:
            size = size_of(item)
            if part and total + size > self.capacity:
                parts.append((part, total))
                part, total = [], 0
            part.append(item)
            total += size
        if part:
            parts.append((part, total))
        return parts

    def _release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            size, turn = self._waiting.popleft()
            self.used += size
            turn.set_result(None)
