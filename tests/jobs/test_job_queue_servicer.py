"""JobQueueService checks its own input: a caller's bug is INVALID_ARGUMENT with a reason, and
nothing reaches the queue (no store write, no publish).

The servicer runs on an in-process server with Ferry's interceptor (which maps errors to
statuses) and without a queue: a request that got past the checks would fail INTERNAL instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2

from ferry.events.v1 import events_pb2
from ferry.jobqueue.v1 import job_queue_service_pb2 as pb
from ferry.jobqueue.v1 import job_queue_service_pb2_grpc
from ferry.jobs.v1 import job_pb2
from ferry.types.v1 import types_pb2
from services.jobs.servicer import JobQueueServicer
from tests.store.conftest import serving

JOB = f"jobs/{uuid.uuid4()}"
IMAGE = pb.ItemInput(input=types_pb2.Input(image=types_pb2.Image(content=b"x")))


def job(**fields: object) -> job_pb2.Job:
    values: dict[str, object] = {
        "name": JOB,
        "model": "models/efficientnet-lite0",
        "items_total": 2,
        "top_k": 3,
    }
    values.update(fields)
    return job_pb2.Job(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[job_queue_service_pb2_grpc.JobQueueServiceStub]:
    servicer = JobQueueServicer()  # no queue: only the checks can answer
    register = lambda server: job_queue_service_pb2_grpc.add_JobQueueServiceServicer_to_server(  # noqa: E731
        servicer, server
    )
    async with serving(register) as channel:
        yield job_queue_service_pb2_grpc.JobQueueServiceStub(channel)


def reason_of(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    raise AssertionError(f"no ErrorInfo in {err}")


SUBMITS = {
    "no tenant": (pb.SubmitJobRequest(job=job(), items=[IMAGE]), "MISSING_TENANT"),
    "bare uuid as name": (
        pb.SubmitJobRequest(tenant="t", job=job(name=str(uuid.uuid4())), items=[IMAGE]),
        "INVALID_RESOURCE_NAME",
    ),
    "name not a uuid": (
        pb.SubmitJobRequest(tenant="t", job=job(name="jobs/nope"), items=[IMAGE]),
        "INVALID_RESOURCE_NAME",
    ),
    "no model": (pb.SubmitJobRequest(tenant="t", job=job(model=""), items=[IMAGE]), "INVALID_MODEL_NAME"),
    "a notebook as a model": (
        pb.SubmitJobRequest(tenant="t", job=job(model="models/notebook:report"), items=[IMAGE]),
        "INVALID_MODEL_NAME",
    ),
    "no items in the job": (
        pb.SubmitJobRequest(tenant="t", job=job(items_total=0), items=[IMAGE]),
        "EMPTY_JOB",
    ),
    "negative top_k": (pb.SubmitJobRequest(tenant="t", job=job(top_k=-1), items=[IMAGE]), "INVALID_TOP_K"),
    "unknown priority": (pb.SubmitJobRequest(tenant="t", job=job(priority=9), items=[IMAGE]), "INVALID_ENUM"),
    "no items sent": (pb.SubmitJobRequest(tenant="t", job=job()), "NO_INPUTS"),
    "more items than the job": (
        pb.SubmitJobRequest(tenant="t", job=job(), items=[IMAGE, IMAGE, IMAGE]),
        "INVALID_INPUT_COUNT",
    ),
    "a part past the job's end": (
        pb.SubmitJobRequest(tenant="t", job=job(), first_item_index=2, items=[IMAGE]),
        "INVALID_INPUT_COUNT",
    ),
    "a negative first index": (
        pb.SubmitJobRequest(tenant="t", job=job(), first_item_index=-1, items=[IMAGE]),
        "INVALID_INPUT_COUNT",
    ),
    "an empty item": (
        pb.SubmitJobRequest(tenant="t", job=job(), items=[IMAGE, pb.ItemInput()]),
        "MISSING_INPUT",
    ),
}


@pytest.mark.parametrize("case", list(SUBMITS))
async def test_bad_submissions_are_invalid_argument_with_a_reason(
    stub: job_queue_service_pb2_grpc.JobQueueServiceStub, case: str
) -> None:
    request, reason = SUBMITS[case]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitJob(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert reason_of(refused.value) == reason
    assert refused.value.details()  # a message to act on


async def test_a_valid_submission_passes_the_checks(
    stub: job_queue_service_pb2_grpc.JobQueueServiceStub,
) -> None:
    # Past the checks there is no queue here: INTERNAL proves the checks let it through.
    ref = pb.ItemInput(input_ref=events_pb2.ObjectRef(bucket="b", name="n", size_bytes=1))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.SubmitJob(
            pb.SubmitJobRequest(tenant="t", job=job(), first_item_index=0, items=[IMAGE, ref])
        )
    assert failed.value.code() == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (
            pb.SubmitNotebookJobRequest(job=job(), notebook_run=events_pb2.NotebookRun(notebook="r")),
            "MISSING_TENANT",
        ),
        (
            pb.SubmitNotebookJobRequest(
                tenant="t", job=job(name="x"), notebook_run=events_pb2.NotebookRun(notebook="r")
            ),
            "INVALID_RESOURCE_NAME",
        ),
        (pb.SubmitNotebookJobRequest(tenant="t", job=job()), "INVALID_NOTEBOOK_JOB"),
    ],
)
async def test_bad_notebook_submissions_are_refused(
    stub: job_queue_service_pb2_grpc.JobQueueServiceStub, request_: pb.SubmitNotebookJobRequest, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitNotebookJob(request_, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(refused.value) == reason


async def test_cancel_and_retry_need_a_tenant_and_a_job_name(
    stub: job_queue_service_pb2_grpc.JobQueueServiceStub,
) -> None:
    for call, request, reason in [
        (stub.CancelJob, pb.CancelJobRequest(name=JOB), "MISSING_TENANT"),
        (stub.CancelJob, pb.CancelJobRequest(tenant="t", name="jobs/"), "INVALID_RESOURCE_NAME"),
        (stub.RetryJob, pb.RetryJobRequest(name=JOB), "MISSING_TENANT"),
        (stub.RetryJob, pb.RetryJobRequest(tenant="t", name="predictions/x"), "INVALID_RESOURCE_NAME"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, timeout=10)  # type: ignore[operator]
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(refused.value) == reason


EXPANSION = events_pb2.JobExpansion(manifest=f"uploads/{uuid.uuid4()}", max_items=10_000)


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (pb.SubmitManifestJobRequest(job=job(), expansion=EXPANSION), "MISSING_TENANT"),
        (
            pb.SubmitManifestJobRequest(tenant="t", job=job(name="x"), expansion=EXPANSION),
            "INVALID_RESOURCE_NAME",
        ),
        (
            pb.SubmitManifestJobRequest(tenant="t", job=job(model=""), expansion=EXPANSION),
            "INVALID_MODEL_NAME",
        ),
        (pb.SubmitManifestJobRequest(tenant="t", job=job(priority=9), expansion=EXPANSION), "INVALID_ENUM"),
        (pb.SubmitManifestJobRequest(tenant="t", job=job()), "INVALID_MANIFEST"),
        (
            pb.SubmitManifestJobRequest(
                tenant="t", job=job(), expansion=events_pb2.JobExpansion(manifest=EXPANSION.manifest)
            ),
            "INVALID_INPUT_COUNT",
        ),
    ],
)
async def test_bad_manifest_submissions_are_refused(
    stub: job_queue_service_pb2_grpc.JobQueueServiceStub, request_: pb.SubmitManifestJobRequest, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitManifestJob(request_, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(refused.value) == reason
