"""Every job ends: a job whose items make no progress is failed as stalled, in real Postgres."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
from nats.js import JetStreamContext

from ferry.jobs.v1 import job_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common.errors import error_from_status
from services.store import codec
from services.store.ingest import write_batch
from services.store.stalls import WorkQueue, fail_stalled
from tests.store.records import create_job, prediction

TENANT = f"stalls-{uuid.uuid4().hex[:6]}"
Stub = store_service_pb2_grpc.StoreServiceStub


async def get_job(store: Stub, job_id: uuid.UUID) -> job_pb2.Job:
    return (await store.GetJob(pb.GetJobRequest(tenant=TENANT, id=str(job_id)))).job


async def test_a_job_without_progress_is_failed_as_stalled_and_stays_failed(
    store: Stub, pool: asyncpg.Pool
) -> None:
    waiting = await create_job(store, TENANT, 3)
    started = await create_job(store, TENANT, 3)
    await write_batch(pool, [codec.prediction_row(TENANT, prediction(started, 0))])
    done = await create_job(store, TENANT, 1)
    await write_batch(pool, [codec.prediction_row(TENANT, prediction(done, 0))])

    assert await fail_stalled(pool, idle_s=3600) == 0  # all of them moved within the hour
    assert await fail_stalled(pool, idle_s=0) == 2  # the queued and the running one, not the done one

    for job_id, finished in ((waiting, 0), (started, 1)):
        job = await get_job(store, job_id)
        assert job.state == job_pb2.JOB_STATE_FAILED
        assert job.items_succeeded + job.items_failed == finished
        error = error_from_status(job.error)
        assert error.reason == "JOB_STALLED" and job.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert "FERRY_STORE_JOB_STALL_TIMEOUT_S" in job.error.message
    assert (await get_job(store, done)).state == job_pb2.JOB_STATE_SUCCEEDED

    # An item that still runs later is counted, but the job stays failed with its reason.
    late = [prediction(waiting, 1), prediction(waiting, 2, failed=True)]
    await write_batch(pool, [codec.prediction_row(TENANT, p) for p in late])
    job = await get_job(store, waiting)
    assert (job.state, job.items_succeeded, job.items_failed) == (job_pb2.JOB_STATE_FAILED, 1, 1)
    assert error_from_status(job.error).reason == "JOB_STALLED"


async def test_queued_and_running_jobs_are_spared_while_the_queue_holds_work(
    store: Stub, pool: asyncpg.Pool
) -> None:
    waiting = await create_job(store, TENANT, 2)
    running = await create_job(store, TENANT, 2)
    await write_batch(pool, [codec.prediction_row(TENANT, prediction(running, 0))])
    # A backlog: both may have items among the queued ones, however long ago they moved.
    assert await fail_stalled(pool, idle_s=0, queue_idle=False) == 0
    for job_id in (waiting, running):
        assert (await get_job(store, job_id)).state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)
    assert await fail_stalled(pool, idle_s=0, queue_idle=True) >= 2
    for job_id in (waiting, running):
        assert (await get_job(store, job_id)).state == job_pb2.JOB_STATE_FAILED


async def test_the_queue_is_idle_once_empty_at_two_looks_in_a_row(js: JetStreamContext) -> None:
    stream = f"STALLS_{uuid.uuid4().hex[:8].upper()}"
    subject = f"stalls.{stream.lower()}"
    await js.add_stream(name=stream, subjects=[subject])
    queue = WorkQueue(js, stream)
    assert not await queue.idle()  # empty, but nothing is known about before
    assert await queue.idle()  # empty at two looks: whatever it held has been recorded
    await js.publish(subject, b"item")
    assert not await queue.idle()  # an item waits: its job may be waiting its turn
    await js.purge_stream(stream)
    assert not await queue.idle()  # just emptied: the last item's record may still be on its way
    assert await queue.idle()
    await js.delete_stream(stream)
    assert not await queue.idle()  # NATS cannot say: no queued or running job is judged
