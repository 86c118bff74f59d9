"""RetryJob and the re-run records it leads to, through real JetStream into real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import grpc
import pytest_asyncio
from nats.js import JetStreamContext

from ferry.jobs.v1 import job_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common.errors import error_from_status
from services.common.ids import item_record_id
from services.common.messaging import with_generation
from services.store import codec
from services.store.ingest import write_batch
from tests.store.conftest import running_ingestor
from tests.store.records import create_job, drained, error_info, error_of, prediction, publish

TENANT = f"retry-{uuid.uuid4().hex[:6]}"
Stub = store_service_pb2_grpc.StoreServiceStub
GAVE_UP = (grpc.StatusCode.UNAVAILABLE, "gave up after 5 attempts", "RETRIES_EXHAUSTED")


@pytest_asyncio.fixture(scope="module", autouse=True)
async def ingesting(js: JetStreamContext, pool: asyncpg.Pool) -> AsyncIterator[str]:
    """This module's ingestor: re-run records travel as the runner publishes them."""
    async with running_ingestor(js, pool) as consumer:
        yield consumer


async def new_job(store: Stub, items: int) -> uuid.UUID:
    return await create_job(store, TENANT, items)


async def finished_job(store: Stub, pool: asyncpg.Pool, items: int, failed: Sequence[int]) -> uuid.UUID:
    """A job whose first run is recorded: the items in ``failed`` failed, the others succeeded."""
    job_id = await new_job(store, items)
    made = [prediction(job_id, i, failed=i in failed) for i in range(items)]
    await write_batch(pool, [codec.prediction_row(TENANT, p) for p in made])
    return job_id


async def retry(store: Stub, job_id: uuid.UUID) -> pb.RetryJobResponse:
    return await store.RetryJob(pb.RetryJobRequest(tenant=TENANT, id=str(job_id)))


async def get_job(store: Stub, job_id: uuid.UUID) -> job_pb2.Job:
    return (await store.GetJob(pb.GetJobRequest(tenant=TENANT, id=str(job_id)))).job


async def item(store: Stub, job_id: uuid.UUID, index: int) -> prediction_pb2.Prediction:
    listing = await store.ListPredictions(pb.ListPredictionsRequest(tenant=TENANT, job_id=str(job_id)))
    return next(p for p in listing.predictions if p.item_index == index)


async def rerun(
    js: JetStreamContext,
    pool: asyncpg.Pool,
    job_id: uuid.UUID,
    results: dict[int, bool],
    generation: int,
    msg_prefix: str = "",
) -> None:
    """Publishes re-run records of ``generation`` (index -> whether it failed), as the runner does."""
    for index, failed in results.items():
        made = prediction(job_id, index, failed=failed, why=GAVE_UP)
        await publish(
            js, TENANT, made, msg_prefix + with_generation(f"{job_id}:{index}", generation), generation
        )
    await drained(js, pool, TENANT)


def progress(job: job_pb2.Job) -> tuple[int, int, int]:
    return job.state, job.items_succeeded, job.items_failed


async def test_retry_marks_failed_items_pending_once(
    store: Stub, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job_id = await finished_job(store, pool, items=3, failed=[1, 2])
    assert (await get_job(store, job_id)).state == job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED

    first = await retry(store, job_id)
    assert (list(first.item_indexes), first.generation, first.job.retry_count) == ([1, 2], 1, 1)
    assert progress(first.job) == (job_pb2.JOB_STATE_RUNNING, 1, 0)  # the two are uncounted again
    assert not first.job.HasField("error")

    # A client repeating the call (its answer was lost, say) re-queues nothing twice.
    again = await retry(store, job_id)
    assert (list(again.item_indexes), again.generation, again.job) == ([1, 2], 1, first.job)
    rows = await pool.fetch(
        "SELECT item_index, generation, retry_pending FROM predictions WHERE job_id = $1 ORDER BY item_index",
        job_id,
    )
    assert [tuple(r) for r in rows] == [(0, 0, False), (1, 1, True), (2, 1, True)]

    await rerun(js, pool, job_id, {1: False}, generation=1)
    later = await retry(store, job_id)  # only the item still pending of the same round
    assert (list(later.item_indexes), later.generation) == ([2], 1)


async def test_a_rerun_that_succeeds_replaces_the_failed_item_and_the_job_succeeds(
    store: Stub, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job_id = await finished_job(store, pool, items=3, failed=[1])
    await retry(store, job_id)
    await rerun(js, pool, job_id, {1: False}, generation=1)

    job = await get_job(store, job_id)
    assert progress(job) == (job_pb2.JOB_STATE_SUCCEEDED, 3, 0)
    assert (job.retry_count, job.HasField("error")) == (1, False)
    replaced = await item(store, job_id, 1)
    assert replaced.state == prediction_pb2.PREDICTION_STATE_SUCCEEDED
    assert (replaced.classes[0].label, replaced.HasField("error")) == ("espresso", False)
    row = await pool.fetchrow(
        "SELECT error_code, error_reason, retry_pending FROM predictions WHERE id = $1",
        item_record_id(job_id, 1),
    )
    assert tuple(row) == (None, None, False)


async def test_a_rerun_that_fails_again_finishes_the_job_as_before(
    store: Stub, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    mixed = await finished_job(store, pool, items=2, failed=[1])
    hopeless = await finished_job(store, pool, items=1, failed=[0])
    for job_id in (mixed, hopeless):
        await retry(store, job_id)
    await rerun(js, pool, mixed, {1: True}, generation=1)
    await rerun(js, pool, hopeless, {0: True}, generation=1)

    partly = await get_job(store, mixed)
    assert progress(partly) == (job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED, 1, 1)
    error = error_from_status(partly.error)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "ITEMS_FAILED")
    assert error_info(partly.error).metadata["last_reason"] == "RETRIES_EXHAUSTED"
    assert progress(await get_job(store, hopeless)) == (job_pb2.JOB_STATE_FAILED, 0, 1)

    next_round = await retry(store, mixed)
    assert (list(next_round.item_indexes), next_round.generation, next_round.job.retry_count) == ([1], 2, 2)


async def test_a_duplicate_or_stale_record_changes_nothing(
    store: Stub, pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    job_id = await finished_job(store, pool, items=2, failed=[0, 1])
    assert (await retry(store, job_id)).generation == 1

    # The first run's record, redelivered after the retry began: of another round, so ignored.
    await rerun(js, pool, job_id, {0: False}, generation=0, msg_prefix="late:")
    assert progress(await get_job(store, job_id)) == (job_pb2.JOB_STATE_RUNNING, 0, 0)
    assert (await item(store, job_id, 0)).state == prediction_pb2.PREDICTION_STATE_FAILED

    await rerun(js, pool, job_id, {0: False, 1: True}, generation=1)
    done = await get_job(store, job_id)
    assert progress(done) == (job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED, 1, 1)

    # The same round's records again, past JetStream's dedup: counted once, the row unchanged.
    await rerun(js, pool, job_id, {0: True, 1: False}, generation=1, msg_prefix="again:")
    assert progress(await get_job(store, job_id)) == progress(done)
    assert (await item(store, job_id, 1)).state == prediction_pb2.PREDICTION_STATE_FAILED


async def test_a_rerun_record_twice_in_one_batch_counts_once(store: Stub, pool: asyncpg.Pool) -> None:
    job_id = await finished_job(store, pool, items=1, failed=[0])
    await retry(store, job_id)
    row = codec.prediction_row(TENANT, prediction(job_id, 0), generation=1)
    # Postgres refuses to upsert one row twice in a statement; that must not stall ingest.
    assert await write_batch(pool, [row, row]) == 1
    assert progress(await get_job(store, job_id)) == (job_pb2.JOB_STATE_SUCCEEDED, 1, 0)


async def test_retry_refuses_unfinished_and_cancelled_jobs(store: Stub, pool: asyncpg.Pool) -> None:
    queued, running = await new_job(store, items=2), await new_job(store, items=2)
    await write_batch(pool, [codec.prediction_row(TENANT, prediction(running, 0, failed=True))])
    for job_id in (queued, running):
        error = await error_of(retry(store, job_id))
        assert (error.code(), error.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"job jobs/{job_id} is still running; retry its failed items once it has finished",
        )

    # Cancelled while queued, or while a retry round is pending: either way, no more runs.
    retrying = await finished_job(store, pool, items=1, failed=[0])
    await retry(store, retrying)
    for job_id in (queued, retrying):
        await store.CancelJob(pb.CancelJobRequest(tenant=TENANT, id=str(job_id)))
        error = await error_of(retry(store, job_id))
        assert (error.code(), error.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "cancelled jobs cannot be retried",
        )


async def test_retry_of_an_unknown_or_another_tenants_job_is_not_found(
    store: Stub, pool: asyncpg.Pool
) -> None:
    job_id = await finished_job(store, pool, items=1, failed=[0])
    for tenant, wanted in [("someone-else", job_id), (TENANT, uuid.uuid4())]:
        error = await error_of(store.RetryJob(pb.RetryJobRequest(tenant=tenant, id=str(wanted))))
        assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"job jobs/{wanted} not found")
    assert (await get_job(store, job_id)).retry_count == 0


async def test_retrying_a_job_without_failures_changes_nothing(store: Stub, pool: asyncpg.Pool) -> None:
    job_id = await finished_job(store, pool, items=2, failed=[])
    answer = await retry(store, job_id)
    assert (list(answer.item_indexes), answer.generation) == ([], 0)
    assert (answer.job.state, answer.job.retry_count) == (job_pb2.JOB_STATE_SUCCEEDED, 0)
