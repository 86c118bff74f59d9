"""A fault of ours while a manifest expands fails its job once; it is not handed back for ever.

Real JetStream and the real jobs service; only the expansion itself is made to raise, standing in
for a bug no input should reach (a lone surrogate in a manifest line once did: the expander raised
UnicodeEncodeError, its request was handed back at once, and it failed again thousands of times a
minute while the job stayed EXPANDING).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

from ferry.events.v1 import events_pb2
from services.common import messaging
from services.common.errors import error_from_status
from services.jobs.expander import Cancelled, Expander
from tests.jobs.conftest import WAIT_S, Harness


@contextlib.asynccontextmanager
async def expansion_events(
    harness: Harness, nats_url: str, job_id: str
) -> AsyncIterator[asyncio.Queue[events_pb2.JobExpansionEvent]]:
    """Starts a runner, asks it to expand a manifest for ``job_id`` and yields the events it reports."""
    events: asyncio.Queue[events_pb2.JobExpansionEvent] = asyncio.Queue()

    async def heard(msg: Msg) -> None:
        event = events_pb2.JobExpansionEvent.FromString(msg.data)
        if event.job_id == job_id:
            await events.put(event)

    listener = await nats.connect(nats_url)
    await listener.subscribe(messaging.EXPANSION_EVENTS_SUBJECT, cb=heard)
    try:
        await harness.start_runner()
        request = events_pb2.JobExpansion(
            tenant="tenant-a", job_id=job_id, model="efficientnet-lite0", manifest="uploads/x"
        )
        await harness.js.publish(messaging.EXPANSIONS_SUBJECT, request.SerializeToString())
        yield events
    finally:
        await listener.close()


async def test_a_fault_while_expanding_fails_the_job_with_a_reason_and_is_not_retried(
    harness: Harness, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = str(uuid.uuid4())
    attempts: list[str] = []

    async def broken(self: Expander, request: events_pb2.JobExpansion) -> int:
        attempts.append(request.job_id)
        raise UnicodeEncodeError("utf-8", "\udc00", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(Expander, "expand", broken)
    async with expansion_events(harness, nats_url, job_id) as events:
        event = await asyncio.wait_for(events.get(), WAIT_S)
        error = error_from_status(event.error)
        assert error.reason == "BACKEND_ERROR" and error.metadata == {"backend": "jobs"}, event
        assert job_id in error.message and "uploads/x" in error.message
        assert event.items_total == 0
        await asyncio.sleep(1.0)  # handed back, it would have been taken again by now, many times
        assert attempts == [job_id]
        assert events.empty()


async def test_an_expansion_cancelled_midway_reports_the_items_it_had_queued(
    harness: Harness, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items queued before the cancel was seen may still run and be counted: store gets their total
    (it used to hear nothing, and a cancelled job read "30 succeeded of 0")."""
    job_id = str(uuid.uuid4())

    async def cancelled_after_a_chunk(self: Expander, request: events_pb2.JobExpansion) -> int:
        raise Cancelled(256)

    monkeypatch.setattr(Expander, "expand", cancelled_after_a_chunk)
    async with expansion_events(harness, nats_url, job_id) as events:
        event = await asyncio.wait_for(events.get(), WAIT_S)
        assert (event.WhichOneof("outcome"), event.items_total) == ("items_total", 256), event
