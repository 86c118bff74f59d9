"""Jobs by manifest in real Postgres: EXPANDING until the jobs service says how many items there
are (or why the manifest cannot make the job), never finished by counts meanwhile, and failed as
stalled only when the expansion stops reporting progress."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import pytest

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common.errors import InvalidArgument, error_from_status
from services.common.messaging import EXPANSION_EVENTS_SUBJECT
from services.store import codec, job_events
from services.store.ingest import write_batch
from services.store.job_events import apply
from services.store.stalls import fail_stalled
from tests.store.records import prediction

TENANT = f"expand-{uuid.uuid4().hex[:6]}"
Stub = store_service_pb2_grpc.StoreServiceStub
EXPANDING = job_pb2.JOB_STATE_EXPANDING


async def create_expanding(store: Stub) -> uuid.UUID:
    job_id = uuid.uuid4()
    wanted = job_pb2.Job(name=f"jobs/{job_id}", model="models/efficientnet-lite0", state=EXPANDING, top_k=5)
    answer = await store.CreateJob(pb.CreateJobRequest(tenant=TENANT, job=wanted))
    assert answer.created and (answer.job.state, answer.job.items_total) == (EXPANDING, 0)
    return job_id


async def get_job(store: Stub, job_id: uuid.UUID) -> job_pb2.Job:
    return (await store.GetJob(pb.GetJobRequest(tenant=TENANT, id=str(job_id)))).job


def expanded(job_id: uuid.UUID, items: int) -> events_pb2.JobExpansionEvent:
    return events_pb2.JobExpansionEvent(tenant=TENANT, job_id=str(job_id), items_total=items)


async def record(pool: asyncpg.Pool, job_id: uuid.UUID, *indexes: int) -> None:
    await write_batch(pool, [codec.prediction_row(TENANT, prediction(job_id, i)) for i in indexes])


async def test_items_counted_while_expanding_do_not_finish_the_job(store: Stub, pool: asyncpg.Pool) -> None:
    job_id = await create_expanding(store)
    await record(pool, job_id, 0, 1)  # the first chunk's items ran before the last chunk was read
    job = await get_job(store, job_id)
    assert (job.state, job.items_succeeded, job.items_total) == (EXPANDING, 2, 0)

    await apply(pool, expanded(job_id, 3))
    job = await get_job(store, job_id)
    assert (job.state, job.items_total) == (job_pb2.JOB_STATE_RUNNING, 3)
    await apply(pool, expanded(job_id, 99))  # a redelivered or late event changes nothing
    assert (await get_job(store, job_id)).items_total == 3
    await record(pool, job_id, 2)
    assert (await get_job(store, job_id)).state == job_pb2.JOB_STATE_SUCCEEDED


async def test_an_expansion_ends_queued_or_already_finished(store: Stub, pool: asyncpg.Pool) -> None:
    queued = await create_expanding(store)
    await apply(pool, expanded(queued, 4))
    assert (await get_job(store, queued)).state == job_pb2.JOB_STATE_QUEUED
    done = await create_expanding(store)
    await record(pool, done, 0, 1)
    await apply(pool, expanded(done, 2))  # every item ran before store heard the total
    assert (await get_job(store, done)).state == job_pb2.JOB_STATE_SUCCEEDED


async def test_a_bad_manifest_fails_the_job_with_its_line_and_reason(store: Stub, pool: asyncpg.Pool) -> None:
    job_id = await create_expanding(store)
    bad = InvalidArgument(
        "uploads/x line 7: not JSON (Expecting value at column 1)", reason="INVALID_MANIFEST"
    )
    await apply(pool, events_pb2.JobExpansionEvent(tenant=TENANT, job_id=str(job_id), error=bad.to_status()))
    job = await get_job(store, job_id)
    assert (job.state, job.items_total) == (job_pb2.JOB_STATE_FAILED, 0)
    error = error_from_status(job.error)
    assert error.reason == "INVALID_MANIFEST" and "line 7" in error.message
    assert job.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    await apply(pool, expanded(job_id, 5))  # a late "done" does not reopen it
    assert (await get_job(store, job_id)).state == job_pb2.JOB_STATE_FAILED


async def test_a_cancelled_expansion_stays_cancelled(store: Stub, pool: asyncpg.Pool) -> None:
    job_id = await create_expanding(store)
    answer = await store.CancelJob(pb.CancelJobRequest(tenant=TENANT, id=str(job_id)))
    assert answer.job.state == job_pb2.JOB_STATE_CANCELLED
    await record(pool, job_id, 0, 1)  # queued before the cancel was seen: they still ran
    await apply(pool, expanded(job_id, 5))
    job = await get_job(store, job_id)
    # It keeps the total of what was queued: "2 of 5, cancelled", not "2 of 0".
    assert (job.state, job.items_total, job.items_succeeded) == (job_pb2.JOB_STATE_CANCELLED, 5, 2)
    await apply(pool, expanded(job_id, 99))  # a redelivered or late event changes nothing
    assert (await get_job(store, job_id)).items_total == 5


async def test_only_an_expansion_that_stopped_reporting_is_failed_as_stalled(
    store: Stub, pool: asyncpg.Pool
) -> None:
    alive = await create_expanding(store)
    gone = await create_expanding(store)
    async with pool.acquire() as connection:  # both went quiet an hour ago
        await connection.execute(
            "UPDATE jobs SET update_time = now() - interval '1 hour' WHERE id = ANY($1::uuid[])",
            [alive, gone],
        )
    await apply(pool, events_pb2.JobExpansionEvent(tenant=TENANT, job_id=str(alive), lines_read=256))
    assert await fail_stalled(pool, idle_s=600) >= 1
    assert (await get_job(store, alive)).state == EXPANDING  # it reported progress just now
    job = await get_job(store, gone)
    assert job.state == job_pb2.JOB_STATE_FAILED
    error = error_from_status(job.error)
    assert error.reason == "JOB_STALLED" and "manifest was not read any further" in error.message


class _LostMidExchange:
    """A pool whose connection Postgres dropped mid-exchange, as asyncpg then reports it."""

    def acquire(self) -> Any:
        raise asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")


class _Delivery:
    """A JetStream delivery of one event: what was done with it."""

    subject = EXPANSION_EVENTS_SUBJECT

    def __init__(self, data: bytes) -> None:
        self.data, self.done = data, []

    async def ack(self) -> None:
        self.done.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.done.append("nak")

    async def term(self) -> None:
        self.done.append("term")


async def test_an_event_met_by_a_connection_lost_mid_exchange_comes_back_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In CI's Postgres outage this error ended store's job-events task (a traceback, and expansions
    # no longer applied until a restart); it is an outage like any other: nak, redelivered.
    monkeypatch.setattr(job_events, "_RETRY_DELAY_S", 0.0)
    events = job_events.JobEvents(None, _LostMidExchange(), "job-events")  # type: ignore[arg-type]
    delivery = _Delivery(expanded(uuid.uuid4(), 3).SerializeToString())
    await events.handle(delivery)  # type: ignore[arg-type]
    assert delivery.done == ["nak"]
