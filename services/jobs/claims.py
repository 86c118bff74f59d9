"""Claim checks: a job item whose image is kept in the Object Store (``JobItem.input_ref``).

Work messages and dead letters carry the reference, never the bytes, so NATS's memory and
JetStream's disk grow with the number of items, not their size; the runner reads an item's
image only while it runs it (``max_inflight`` images at most per runner).
"""

from __future__ import annotations

import asyncio

import grpc
from google.rpc import status_pb2
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ferry.events.v1 import events_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import status_to_proto


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
                found = await self._buckets[ref.bucket].get(ref.name)
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
        return types_pb2.Input(image=types_pb2.Image(content=found.data or b""))
