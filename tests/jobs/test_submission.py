"""CreateJob's publishing of job items (the job queue's publish_job_items) on a real JetStream.

Items go out pipelined, and whatever that pass did not get acknowledged is published again one
by one; either way each item is stored once, on its priority's subject.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import pytest
from nats.js import JetStreamContext

from ferry.events.v1 import events_pb2
from ferry.types.v1 import types_pb2
from services.common import messaging
from services.common.publisher import Publisher
from services.jobs import submission
from services.jobs.submission import publish_job_items


async def stored_items(js: JetStreamContext, after_seq: int) -> dict[str, tuple[str, events_pb2.JobItem]]:
    last = (await js.stream_info(messaging.WORK_STREAM)).state.last_seq
    msgs = [await js.get_msg(messaging.WORK_STREAM, seq) for seq in range(after_seq + 1, last + 1)]
    found: dict[str, tuple[str, events_pb2.JobItem]] = {}
    for m in msgs:
        msg_id = (m.headers or {})["Nats-Msg-Id"]
        assert msg_id not in found, f"{msg_id} stored twice"
        found[msg_id] = (m.subject or "", events_pb2.JobItem.FromString(m.data or b""))
    return found


async def test_every_item_is_stored_once_on_its_priority_subject(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "jobs-submission-test", stack)
        await messaging.ensure_streams(js)
        job_id = str(uuid.uuid4())
        template = events_pb2.JobItem(tenant="acme", job_id=job_id, model="m", top_k=1, priority=1)
        inputs = [types_pb2.Input(image=types_pb2.Image(content=f"img-{i}".encode())) for i in range(300)]
        before = (await js.stream_info(messaging.WORK_STREAM)).state.last_seq

        await publish_job_items(Publisher(js, 5.0), template, inputs, max_inflight=16)
        await publish_job_items(Publisher(js, 5.0), template, inputs, max_inflight=16)  # a client's retry

        found = await stored_items(js, before)
        assert set(found) == {f"{job_id}:{i}" for i in range(300)}
        for i in range(300):
            subject, item = found[f"{job_id}:{i}"]
            assert subject == "ferry.jobs.items.high"
            assert (item.item_index, item.priority, item.input.image.content) == (i, 1, f"img-{i}".encode())


async def test_items_the_pipelined_pass_left_unacknowledged_are_published_again(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        _, js = await messaging.connect(nats_url, "jobs-submission-test", stack)
        await messaging.ensure_streams(js)
        job_id = str(uuid.uuid4())
        template = events_pb2.JobItem(tenant="acme", job_id=job_id, model="m", top_k=1, priority=3)
        inputs = [types_pb2.Input(image=types_pb2.Image(content=b"x"))] * 50
        before = (await js.stream_info(messaging.WORK_STREAM)).state.last_seq
        pipelined = submission._publish_pipelined

        async def acks_lost(*args: object, **kwargs: object) -> list[int]:
            # The items were sent and stored, but (as after a lost connection) no ack was seen.
            await pipelined(*args, **kwargs)  # type: ignore[arg-type]
            return list(range(50))

        monkeypatch.setattr(submission, "_publish_pipelined", acks_lost)
        await publish_job_items(Publisher(js, 5.0), template, inputs, max_inflight=8)

        found = await stored_items(js, before)  # published twice, stored once (msg ids)
        assert set(found) == {f"{job_id}:{i}" for i in range(50)}
        assert {subject for subject, _ in found.values()} == {"ferry.jobs.items.low"}
