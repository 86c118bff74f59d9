"""The gateway has result files made by the job queue (``JobQueueService.WriteResultFile``) and only
reads them: a real in-process gRPC server with Ferry's interceptor serves the jobs service's
servicer and builder, and the gateway's ``JobResults`` calls it through ``JobQueueClient`` and its
Backend (deadline and error mapping) as in the gateway. Store is stood in for by its records.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from ferry.jobqueue.v1 import job_queue_service_pb2_grpc
from ferry.jobs.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from services.common.downstream import Backend
from services.common.errors import FerryError
from services.common.readiness import Readiness
from services.common.result_stores import ResultStore
from services.common.runtime import common_interceptor
from services.gateway import job_results
from services.gateway.components import ComponentsSlot
from services.gateway.job_manager import JobQueueClient
from services.gateway.job_results import JobResults
from services.gateway.service import GatewayService
from services.gateway.servicers.jobs import JobServicer
from services.gateway.settings import GatewaySettings
from services.jobs.result_files import ResultFiles, result_of
from services.jobs.servicer import JobQueueServicer
from tests.jobs.test_result_file import RecordsOf, a_job, all_kinds
from tests.jobs.test_result_file_writes import PAGE, WAIT_S, Large, Paused
from tests.store.conftest import serving


@pytest.fixture(scope="module")
def large() -> Large:
    return Large()


@dataclass
class Sides:
    """The gateway's reader, its Backend to the jobs service, and the jobs service's builder."""

    results: JobResults
    backend: Backend
    files: ResultFiles


@asynccontextmanager
async def gateway_and_jobs(
    records: RecordsOf, store: ResultStore, timeout_s: float = 30.0
) -> AsyncIterator[Sides]:
    """The gateway's reader, calling the jobs service's WriteResultFile over gRPC; and the builder."""
    files = ResultFiles(records, store)  # type: ignore[arg-type]  # a stand-in for store's records
    servicer = JobQueueServicer(result_files=files)
    register = lambda server: job_queue_service_pb2_grpc.add_JobQueueServiceServicer_to_server(  # noqa: E731
        servicer, server
    )
    async with serving(register) as channel:
        stub = job_queue_service_pb2_grpc.JobQueueServiceStub(channel)
        backend = Backend("jobs", channel, timeout_s, own_unavailable=True)
        queue = JobQueueClient(stub, backend, 4 * 1024 * 1024, backend)
        yield Sides(JobResults(queue.write_result_file, store), backend, files)
        await files.close()


async def indexes(results: JobResults, name: str) -> list[int]:
    parse = job_service_pb2.GetJobResultsResponse.FromString
    return [parse(message).index async for message in results.read("acme", name)]


def test_the_gateway_keeps_no_builder() -> None:
    assert not {"result_record", "result_of", "object_name"} & set(vars(job_results))


async def test_downloads_of_a_new_file_at_once_have_it_built_once_by_the_jobs_service(
    result_files: ResultStore,
) -> None:
    job, predictions = a_job()
    records = RecordsOf(job, predictions)
    async with gateway_and_jobs(records, result_files) as sides:
        results, files = sides.results, sides.files
        read = await asyncio.gather(*(indexes(results, job.name) for _ in range(4)))
        assert read == [[0, 1, 2]] * 4
        assert files.builds == 1 and records.listings == 2  # one build: 3 records in pages of two
        assert await indexes(results, job.name) == [0, 1, 2]  # read back, not built again
        assert files.builds == 1 and records.listings == 2


async def test_a_running_job_is_failed_precondition_through_the_rpc(result_files: ResultStore) -> None:
    job, predictions = a_job(state=job_pb2.JOB_STATE_RUNNING)
    async with gateway_and_jobs(RecordsOf(job, predictions), result_files) as sides:
        results, files = sides.results, sides.files
        with pytest.raises(FerryError) as refused:
            await indexes(results, job.name)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "JOB_NOT_FINISHED" and f"GET /v1/{job.name}:watch" in refused.value.message
    assert files.builds == 0


async def test_a_bad_name_is_refused_by_the_gateway_before_any_call(result_files: ResultStore) -> None:
    job, predictions = a_job()
    async with gateway_and_jobs(RecordsOf(job, predictions), result_files) as sides:
        with pytest.raises(FerryError) as refused:
            await indexes(sides.results, "jobs/not-a-uuid")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.reason == "INVALID_RESOURCE_NAME"


async def test_a_build_that_fails_comes_back_as_its_status_and_the_next_call_builds_again(
    result_files: ResultStore, large: Large
) -> None:
    job = large.job()
    records = Paused(job, large.predictions, pages=2, fail=True)  # store goes away after 2 pages
    async with gateway_and_jobs(records, result_files) as sides:
        results, files = sides.results, sides.files
        with pytest.raises(FerryError) as failed:
            await asyncio.wait_for(indexes(results, job.name), WAIT_S)
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        assert failed.value.reason == "STORE_UNAVAILABLE"  # the jobs service's own, passed on at once
        records.fail = False  # store is back
        records.go.set()
        assert await indexes(results, job.name) == list(range(len(large.predictions)))
        assert files.builds == 2


async def test_a_build_longer_than_the_gateways_deadline_goes_on_and_its_retry_waits_for_it(
    result_files: ResultStore, large: Large
) -> None:
    job = large.job()
    records = Paused(job, large.predictions, pages=4)
    async with gateway_and_jobs(records, result_files, timeout_s=1.0) as sides:
        results, files = sides.results, sides.files
        with pytest.raises(FerryError) as late:
            await indexes(results, job.name)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        sides.backend.timeout_s = WAIT_S  # its client asks again, with time for the build to end
        retry = asyncio.create_task(indexes(results, job.name))
        await asyncio.sleep(0.2)
        records.go.set()
        assert await asyncio.wait_for(retry, WAIT_S) == list(range(len(large.predictions)))
        assert files.builds == 1  # the retry waited for the build the first call started
        assert records.listings == -(-len(large.predictions) // PAGE)


@asynccontextmanager
async def public_gateway(results: JobResults) -> AsyncIterator[grpc.aio.Channel]:
    """The gateway's JobService on an in-process server with the interceptor its runtime puts in
    front of it (``common_interceptor``), downloads read by ``results``; yields a channel to it."""
    slot = ComponentsSlot()

    async def tenant(context: Any) -> str:
        return "acme"

    slot.fill(SimpleNamespace(auth=SimpleNamespace(tenant=tenant), jobs=SimpleNamespace(results=results)))  # type: ignore[arg-type]
    gateway = GatewayService(GatewaySettings())
    server = grpc.aio.server(interceptors=[common_interceptor(gateway, Readiness.started("gateway"), [])])
    job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(slot), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def test_a_download_through_the_gateway_parses_and_serializes_no_result(
    result_files: ResultStore, large: Large, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetJobResults sends the stored messages' bytes as they are: no JSON or protobuf parse of a
    result in the gateway, nor a serialization (gRPC's serializer passes the bytes through)."""
    job, _ = a_job()
    predictions = [*all_kinds(job), *large.predictions[:500]]
    records = RecordsOf(job, predictions, page=PAGE)
    async with gateway_and_jobs(records, result_files) as sides, public_gateway(sides.results) as channel:
        await sides.files.write("acme", job.name)  # built beforehand: the builder serializes
        calls: list[str] = []

        def counted(name: str, real: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return real(*args, **kwargs)

            return call

        response = job_service_pb2.GetJobResultsResponse
        for name in ("FromString", "ParseFromString", "MergeFromString", "SerializeToString"):
            monkeypatch.setattr(response, name, counted(name, getattr(response, name)))
        for name in ("Parse", "ParseDict"):
            monkeypatch.setattr(json_format, name, counted(name, getattr(json_format, name)))
        download = channel.unary_stream(
            "/ferry.jobs.v1.JobService/GetJobResults",
            request_serializer=job_service_pb2.GetJobResultsRequest.SerializeToString,
        )  # no response deserializer: the test sees the bytes sent
        sent = [message async for message in download(job_service_pb2.GetJobResultsRequest(name=job.name))]
        assert calls == []
        monkeypatch.undo()
    assert [response.FromString(message) for message in sent] == [result_of(p) for p in predictions]
