"""``ferry.jobqueue.v1.JobQueueService`` handlers: check the caller's request, then the queue acts.

The gateway validated the user's request already; these checks are of this internal contract
(a tenant, a job name, items that fit the job), so a caller's bug is an INVALID_ARGUMENT with a
reason, never a half-queued job.
"""

from __future__ import annotations

import uuid

import grpc

from ferry.jobqueue.v1 import job_queue_service_pb2 as pb
from ferry.jobqueue.v1 import job_queue_service_pb2_grpc
from ferry.jobs.v1 import job_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import InvalidArgument
from services.common.ids import parse_name
from services.jobs.result_files import ResultFiles
from services.jobs.submission import JobInput, JobQueue

Context = grpc.aio.ServicerContext[object, object]


class JobQueueServicer(job_queue_service_pb2_grpc.JobQueueServiceServicer):
    """Submits, cancels and retries jobs for the gateway (see ``submission.JobQueue``), and builds
    their result files (``result_files.ResultFiles``)."""

    def __init__(self, queue: JobQueue | None = None, result_files: ResultFiles | None = None) -> None:
        self._queue = queue
        self._result_files = result_files

    def attach(self, queue: JobQueue, result_files: ResultFiles) -> None:
        """Gives the servicer its queue and result files once the service's connections are up
        (the readiness gate lets no call through before)."""
        self._queue = queue
        self._result_files = result_files

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            raise RuntimeError("JobQueueService called before start() finished: the readiness gate is off")
        return self._queue

    @property
    def result_files(self) -> ResultFiles:
        if self._result_files is None:
            raise RuntimeError("JobQueueService called before start() finished: the readiness gate is off")
        return self._result_files

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Context) -> pb.SubmitJobResponse:
        tenant = _tenant(request.tenant)
        job = _job(request.job)
        inputs = _items(request, job)
        recorded = await self.queue.submit(tenant, job, request.first_item_index, inputs)
        return pb.SubmitJobResponse(job=recorded)

    async def SubmitManifestJob(
        self, request: pb.SubmitManifestJobRequest, context: Context
    ) -> pb.SubmitManifestJobResponse:
        tenant = _tenant(request.tenant)
        _job_id(request.job.name)
        _priority(request.job.priority)
        _model(request.job.model)
        if not request.expansion.manifest.startswith("uploads/"):
            raise InvalidArgument(
                f"expansion.manifest is {request.expansion.manifest!r}; expected 'uploads/<id>'",
                reason="INVALID_MANIFEST",
                metadata={"field": "expansion.manifest"},
            )
        if request.expansion.max_items < 1:
            raise InvalidArgument(
                f"expansion.max_items is {request.expansion.max_items}; expected 1 or more",
                reason="INVALID_INPUT_COUNT",
                metadata={"field": "expansion.max_items"},
            )
        job = await self.queue.submit_manifest(tenant, request.job, request.expansion)
        return pb.SubmitManifestJobResponse(job=job)

    async def SubmitNotebookJob(
        self, request: pb.SubmitNotebookJobRequest, context: Context
    ) -> pb.SubmitNotebookJobResponse:
        tenant = _tenant(request.tenant)
        _job_id(request.job.name)
        _priority(request.job.priority)
        if not request.notebook_run.notebook:
            raise InvalidArgument(
                "notebook_run.notebook is required: the name of a registered notebook",
                reason="INVALID_NOTEBOOK_JOB",
                metadata={"field": "notebook_run.notebook"},
            )
        job = await self.queue.submit_notebook(tenant, request.job, request.notebook_run)
        return pb.SubmitNotebookJobResponse(job=job)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.CancelJobResponse:
        tenant = _tenant(request.tenant)
        job_id = _job_id(request.name)
        return pb.CancelJobResponse(job=await self.queue.cancel(tenant, job_id))

    async def RetryJob(self, request: pb.RetryJobRequest, context: Context) -> pb.RetryJobResponse:
        tenant = _tenant(request.tenant)
        job_id = _job_id(request.name)
        return await self.queue.retry(tenant, job_id)

    async def WriteResultFile(
        self, request: pb.WriteResultFileRequest, context: Context
    ) -> pb.WriteResultFileResponse:
        tenant = _tenant(request.tenant)
        _job_id(request.name)
        written = await self.result_files.write(tenant, request.name)
        return pb.WriteResultFileResponse(object_name=written.name, job=written.job, built=written.built)


def _tenant(tenant: str) -> str:
    """Every job belongs to a tenant, so a request without one is a caller bug."""
    if not tenant:
        raise InvalidArgument("tenant is required; pass the caller's tenant", reason="MISSING_TENANT")
    return tenant


def _job_id(name: str) -> uuid.UUID:
    if not name.startswith("jobs/"):
        raise InvalidArgument(
            f"job name {name!r} is not of the form 'jobs/<uuid>'",
            reason="INVALID_RESOURCE_NAME",
            metadata={"name": name},
        )
    return parse_name(name, "jobs")


def _priority(value: int) -> None:
    if value not in types_pb2.Priority.values():
        raise InvalidArgument(
            f"job.priority is {value}; expected one of {', '.join(types_pb2.Priority.keys()[1:])}",
            reason="INVALID_ENUM",
            metadata={"field": "job.priority"},
        )


def _model(name: str) -> None:
    model = name.removeprefix("models/")
    if not model or ":" in model:
        # "notebook:<name>" is not a model: notebook jobs go through SubmitNotebookJob.
        raise InvalidArgument(
            f"job.model is {name!r}; expected 'models/<model>' (notebooks: SubmitNotebookJob)",
            reason="INVALID_MODEL_NAME",
            metadata={"field": "job.model"},
        )


def _job(job: job_pb2.Job) -> job_pb2.Job:
    """Checks the model job to record: a name, a model, a size, a top_k and a known priority."""
    _job_id(job.name)
    _priority(job.priority)
    _model(job.model)
    if job.items_total < 1:
        raise InvalidArgument(
            f"a job needs at least one item; job.items_total is {job.items_total}", reason="EMPTY_JOB"
        )
    if job.top_k < 0:
        raise InvalidArgument(f"job.top_k is {job.top_k}; expected 0 or more", reason="INVALID_TOP_K")
    return job


def _items(request: pb.SubmitJobRequest, job: job_pb2.Job) -> list[JobInput]:
    """The items' inputs, each an Input or a claim check, all inside the job's items_total."""
    first = request.first_item_index
    if not request.items:
        raise InvalidArgument("items is empty; send at least one item to queue", reason="NO_INPUTS")
    if first < 0 or first + len(request.items) > job.items_total:
        raise InvalidArgument(
            f"items {first}..{first + len(request.items) - 1} are outside the job's "
            f"{job.items_total} items (0..{job.items_total - 1})",
            reason="INVALID_INPUT_COUNT",
            metadata={"field": "first_item_index"},
        )
    inputs: list[JobInput] = []
    for i, item in enumerate(request.items):
        kind = item.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(
                f"items[{i}] has neither input nor input_ref",
                reason="MISSING_INPUT",
                metadata={"field": f"items[{i}]"},
            )
        inputs.append(item.input_ref if kind == "input_ref" else item.input)
    return inputs
