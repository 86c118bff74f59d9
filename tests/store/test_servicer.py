"""store's gRPC API on a real Postgres: tenancy, paging, idempotent creation, errors."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import grpc
import pytest

from ferry.jobs.v1 import job_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from services.store import codec
from services.store.ingest import write_batch
from services.store.repositories import api_keys
from tests.store.records import prediction, queued_job

Stub = store_service_pb2_grpc.StoreServiceStub


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_unknown_and_malformed_ids(store: Stub) -> None:
    missing = str(uuid.uuid4())
    assert (
        await code_of(store.GetPrediction(pb.GetPredictionRequest(tenant="t", id=missing)))
        == grpc.StatusCode.NOT_FOUND
    )
    assert await code_of(store.GetJob(pb.GetJobRequest(tenant="t", id=missing))) == grpc.StatusCode.NOT_FOUND
    assert (
        await code_of(store.GetJob(pb.GetJobRequest(tenant="t", id="nope")))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_another_tenant_sees_nothing(store: Stub, pool: asyncpg.Pool) -> None:
    made = prediction()
    await write_batch(pool, [codec.prediction_row("owner", made)])
    record_id = made.name.removeprefix("predictions/")
    got = await store.GetPrediction(pb.GetPredictionRequest(tenant="owner", id=record_id))
    assert got.prediction.name == made.name
    assert got.prediction.timing.inference_ms == 12.5
    stranger = store.GetPrediction(pb.GetPredictionRequest(tenant="stranger", id=record_id))
    assert await code_of(stranger) == grpc.StatusCode.NOT_FOUND


async def test_paging_returns_every_prediction_once_newest_first(store: Stub, pool: asyncpg.Pool) -> None:
    tenant = f"pager-{uuid.uuid4().hex[:6]}"
    made = [prediction() for _ in range(7)]
    await write_batch(pool, [codec.prediction_row(tenant, p) for p in made])
    seen, token = [], ""
    while True:
        page = await store.ListPredictions(
            pb.ListPredictionsRequest(tenant=tenant, page_size=3, page_token=token)
        )
        seen += [p.name for p in page.predictions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [p.name for p in reversed(made)]
    bad = store.ListPredictions(pb.ListPredictionsRequest(tenant=tenant, page_token="garbage!"))
    assert await code_of(bad) == grpc.StatusCode.INVALID_ARGUMENT


async def test_create_job_is_idempotent(store: Stub) -> None:
    job = queued_job(2)
    first = await store.CreateJob(pb.CreateJobRequest(tenant="jobs", job=job))
    again = await store.CreateJob(pb.CreateJobRequest(tenant="jobs", job=job))
    assert (first.created, again.created) == (True, False)
    assert again.job.name == first.job.name and again.job.state == job_pb2.JOB_STATE_QUEUED
    listed = await store.ListJobs(pb.ListJobsRequest(tenant="jobs"))
    assert [j.name for j in listed.jobs].count(job.name) == 1


async def test_cancelling_a_finished_job_changes_nothing(store: Stub, pool: asyncpg.Pool) -> None:
    job = (await store.CreateJob(pb.CreateJobRequest(tenant="fin", job=queued_job(1)))).job
    job_id = uuid.UUID(job.name.removeprefix("jobs/"))
    await write_batch(pool, [codec.prediction_row("fin", prediction(job_id, 0))])
    after = (await store.CancelJob(pb.CancelJobRequest(tenant="fin", id=str(job_id)))).job
    assert after.state == job_pb2.JOB_STATE_SUCCEEDED


async def test_lookup_api_key(store: Stub, pool: asyncpg.Pool) -> None:
    digest = hashlib.sha256(b"secret-key").hexdigest()
    async with pool.acquire() as connection:
        await api_keys.upsert(connection, digest, "acme", "dev")
    found = await store.LookupApiKey(pb.LookupApiKeyRequest(key_sha256=digest))
    assert (found.tenant, found.key_name) == ("acme", "dev")
    unknown = store.LookupApiKey(pb.LookupApiKeyRequest(key_sha256="0" * 64))
    assert await code_of(unknown) == grpc.StatusCode.NOT_FOUND
