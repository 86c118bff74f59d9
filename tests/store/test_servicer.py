"""store's gRPC API on a real Postgres: tenancy, paging, idempotent creation, cancellation, errors."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest

from ferry.jobs.v1 import job_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.common import paging
from services.store import codec
from services.store.ingest import write_batch
from services.store.repositories import api_keys
from tests.store.records import error_of, prediction, queued_job, record_id

Stub = store_service_pb2_grpc.StoreServiceStub


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def create_job(store: Stub, owner: str, items: int = 1) -> str:
    job = (await store.CreateJob(pb.CreateJobRequest(tenant=owner, job=queued_job(items)))).job
    return job.name.removeprefix("jobs/")


async def test_unknown_ids_are_not_found_and_say_which(store: Stub) -> None:
    missing = str(uuid.uuid4())
    for call, name in [
        (store.GetPrediction(pb.GetPredictionRequest(tenant="t", id=missing)), f"predictions/{missing}"),
        (store.GetJob(pb.GetJobRequest(tenant="t", id=missing)), f"jobs/{missing}"),
        (store.CancelJob(pb.CancelJobRequest(tenant="t", id=missing)), f"jobs/{missing}"),
    ]:
        error = await error_of(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert name in (error.details() or "")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.GetJob(pb.GetJobRequest(tenant="t", id="nope")),
        lambda s: s.GetPrediction(pb.GetPredictionRequest(tenant="t", id="predictions/x")),
        lambda s: s.ListPredictions(pb.ListPredictionsRequest(tenant="t", job_id="nope")),
        lambda s: s.GetJob(pb.GetJobRequest(tenant="", id=str(uuid.uuid4()))),
        lambda s: s.ListJobs(pb.ListJobsRequest(tenant="t", page_size=1001)),
        lambda s: s.ListJobs(pb.ListJobsRequest(tenant="t", page_size=-1)),
        lambda s: s.ListJobs(pb.ListJobsRequest(tenant="t", page_token="garbage!")),
        lambda s: s.CreateJob(pb.CreateJobRequest(tenant="t", job=queued_job(0))),
        lambda s: s.LookupApiKey(pb.LookupApiKeyRequest(key_sha256="not-a-digest")),
    ],
    ids=[
        "bad-job-id", "bad-prediction-id", "bad-job-filter", "no-tenant", "page-too-big",
        "negative-page", "bad-token", "empty-job", "bad-digest",
    ],
)  # fmt: skip
async def test_bad_requests_are_invalid_arguments(store: Stub, call: Callable[[Stub], Any]) -> None:
    error = await error_of(call(store))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


@pytest.mark.parametrize(
    "position",
    [
        {"t": "2026-12-06T20:58:17+00:00", "id": "nope"},
        {"t": "2026-12-06T20:58:17+00:00", "id": 7},
        {"t": 5, "id": "01a24d26-7bbe-70a1-87c1-754e0cf8df51"},
        {"id": "01a24d26-7bbe-70a1-87c1-754e0cf8df51"},
    ],
)
async def test_a_tampered_page_token_is_invalid_page_token_saying_what_to_pass(
    store: Stub, position: dict[str, Any]
) -> None:
    """A token edited by hand (a decodable one with a bad id) said "page id 'nope' is not a UUID",
    reason INVALID_RESOURCE_NAME: a name the caller never sent."""
    token = paging.encode_page_token(position)
    for call in [
        store.ListPredictions(pb.ListPredictionsRequest(tenant="t", page_token=token)),
        store.ListJobs(pb.ListJobsRequest(tenant="t", page_token=token)),
        store.ListApiKeys(pb.ListApiKeysRequest(tenant="t", page_token=token)),
    ]:
        error = await error_of(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "pass the next_page_token of the previous page unchanged" in (error.details() or "")


async def test_another_tenant_sees_nothing(store: Stub, pool: asyncpg.Pool) -> None:
    owner, stranger = tenant(), tenant()
    made = prediction()
    made.source = prediction_pb2.PREDICTION_SOURCE_SYNC  # store's default for a record without a job
    await write_batch(pool, [codec.prediction_row(owner, made)])
    got = await store.GetPrediction(pb.GetPredictionRequest(tenant=owner, id=str(record_id(made))))
    assert got.prediction == made  # every field survives the round trip through Postgres
    job_id = await create_job(store, owner)

    for call in [
        store.GetPrediction(pb.GetPredictionRequest(tenant=stranger, id=str(record_id(made)))),
        store.GetJob(pb.GetJobRequest(tenant=stranger, id=job_id)),
        store.CancelJob(pb.CancelJobRequest(tenant=stranger, id=job_id)),
    ]:
        assert (await error_of(call)).code() == grpc.StatusCode.NOT_FOUND
    assert not (await store.ListPredictions(pb.ListPredictionsRequest(tenant=stranger))).predictions
    assert not (await store.ListJobs(pb.ListJobsRequest(tenant=stranger))).jobs
    job = (await store.GetJob(pb.GetJobRequest(tenant=owner, id=job_id))).job
    assert job.state == job_pb2.JOB_STATE_QUEUED  # the stranger's cancel did nothing


async def all_pages(fetch: Callable[[str], Awaitable[tuple[list[str], str]]]) -> list[str]:
    """Follows next_page_token to the end; returns every name in order."""
    seen, token = [], ""
    while True:
        names, token = await fetch(token)
        seen += names
        if not token:
            return seen


async def test_paging_returns_every_prediction_once_newest_first(store: Stub, pool: asyncpg.Pool) -> None:
    owner = tenant()
    made = [prediction() for _ in range(7)]
    await write_batch(pool, [codec.prediction_row(owner, p) for p in made])

    async def page(token: str) -> tuple[list[str], str]:
        answer = await store.ListPredictions(
            pb.ListPredictionsRequest(tenant=owner, page_size=3, page_token=token)
        )
        return [p.name for p in answer.predictions], answer.next_page_token

    newest_first = sorted(made, key=lambda p: (p.create_time.ToNanoseconds(), record_id(p)), reverse=True)
    assert await all_pages(page) == [p.name for p in newest_first]


async def test_a_page_size_of_zero_means_fifty(store: Stub, pool: asyncpg.Pool) -> None:
    owner = tenant()
    await write_batch(pool, [codec.prediction_row(owner, prediction()) for _ in range(51)])
    first = await store.ListPredictions(pb.ListPredictionsRequest(tenant=owner))
    assert (len(first.predictions), bool(first.next_page_token)) == (50, True)


async def test_a_jobs_items_page_in_item_order(store: Stub, pool: asyncpg.Pool) -> None:
    owner = tenant()
    job_id = uuid.UUID(await create_job(store, owner, items=5))
    await write_batch(pool, [codec.prediction_row(owner, prediction(job_id, i)) for i in (3, 0, 4, 1, 2)])

    async def page(token: str) -> tuple[list[str], str]:
        answer = await store.ListPredictions(
            pb.ListPredictionsRequest(tenant=owner, job_id=str(job_id), page_size=2, page_token=token)
        )
        return [str(p.item_index) for p in answer.predictions], answer.next_page_token

    assert await all_pages(page) == ["0", "1", "2", "3", "4"]
    newest_token = (
        await store.ListPredictions(pb.ListPredictionsRequest(tenant=owner, page_size=1))
    ).next_page_token
    mixed = store.ListPredictions(
        pb.ListPredictionsRequest(tenant=owner, job_id=str(job_id), page_token=newest_token)
    )
    assert (await error_of(mixed)).code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_paging_returns_every_job_once_newest_first(store: Stub) -> None:
    owner = tenant()
    created = [await create_job(store, owner) for _ in range(5)]

    keys: dict[str, tuple[int, uuid.UUID]] = {}

    async def page(token: str) -> tuple[list[str], str]:
        answer = await store.ListJobs(pb.ListJobsRequest(tenant=owner, page_size=2, page_token=token))
        for job in answer.jobs:
            keys[job.name] = (job.create_time.ToNanoseconds(), uuid.UUID(job.name.removeprefix("jobs/")))
        return [j.name.removeprefix("jobs/") for j in answer.jobs], answer.next_page_token

    listed = await all_pages(page)
    assert sorted(listed) == sorted(created)  # each job exactly once
    order = [keys[f"jobs/{j}"] for j in listed]
    assert order == sorted(order, reverse=True)  # newest first


async def test_create_job_is_idempotent(store: Stub) -> None:
    owner, job = tenant(), queued_job(2)
    first = await store.CreateJob(pb.CreateJobRequest(tenant=owner, job=job))
    again = await store.CreateJob(pb.CreateJobRequest(tenant=owner, job=job))
    assert (first.created, again.created) == (True, False)
    assert again.job == first.job
    assert (first.job.name, first.job.state, first.job.items_total) == (job.name, job_pb2.JOB_STATE_QUEUED, 2)
    listed = await store.ListJobs(pb.ListJobsRequest(tenant=owner))
    assert [j.name for j in listed.jobs] == [job.name]
    taken = store.CreateJob(pb.CreateJobRequest(tenant=tenant(), job=job))
    assert (await error_of(taken)).code() == grpc.StatusCode.ALREADY_EXISTS


async def test_cancel_moves_an_unfinished_job_and_leaves_a_finished_one(
    store: Stub, pool: asyncpg.Pool
) -> None:
    owner = tenant()
    queued = await create_job(store, owner)
    cancelled = (await store.CancelJob(pb.CancelJobRequest(tenant=owner, id=queued))).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    again = (await store.CancelJob(pb.CancelJobRequest(tenant=owner, id=queued))).job
    assert again.state == job_pb2.JOB_STATE_CANCELLED

    finished = uuid.UUID(await create_job(store, owner))
    await write_batch(pool, [codec.prediction_row(owner, prediction(finished, 0))])
    after = (await store.CancelJob(pb.CancelJobRequest(tenant=owner, id=str(finished)))).job
    assert (after.state, after.items_succeeded) == (job_pb2.JOB_STATE_SUCCEEDED, 1)


async def test_lookup_api_key(store: Stub, pool: asyncpg.Pool) -> None:
    digest = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    async with pool.acquire() as connection:
        await api_keys.upsert(connection, digest, "acme", "ci")
    found = await store.LookupApiKey(pb.LookupApiKeyRequest(key_sha256=digest))
    assert (found.tenant, found.key_name) == ("acme", "ci")
    unknown = store.LookupApiKey(pb.LookupApiKeyRequest(key_sha256="0" * 64))
    assert (await error_of(unknown)).code() == grpc.StatusCode.NOT_FOUND
