"""Creating, cancelling and retrying jobs: the gateway's side, validation and identity.

The gateway checks the request, resolves the tenant and the job's id, checks the model and reads
the inputs (URLs fetched); the jobs service's job queue (``ferry.jobqueue.v1.JobQueueService``)
then records the job and queues its items. A job by manifest is only checked for what is cheap
(the upload exists, is the tenant's, and makes no more items than a job takes): the queue records
it EXPANDING and the jobs service reads the manifest into items in the background
(``services/jobs/expander.py``). Nothing here publishes work: subjects, msg ids and generations
are the queue's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from ferry.events.v1 import events_pb2
from ferry.jobqueue.v1 import job_queue_service_pb2 as queue_pb2
from ferry.jobqueue.v1 import job_queue_service_pb2_grpc
from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.models.v1 import model_pb2
from ferry.store.v1 import store_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common import fetcher, validation
from services.common.downstream import Backend
from services.common.errors import InvalidArgument
from services.common.ids import job_id_for_request
from services.common.job_states import FINISHED
from services.common.result_stores import result_store
from services.common.tracing import current_trace_id
from services.gateway import notebook_jobs
from services.gateway.catalog import ModelCatalog, refuse_failed
from services.gateway.idempotency import Edge, new_id
from services.gateway.job_items import list_job_items
from services.gateway.job_results import JobResults
from services.gateway.records import Records
from services.gateway.request_ids import Part, RequestIds, digest
from services.gateway.settings import GatewaySettings
from services.gateway.uploads import ZIP, Uploads

#: One job item's input: an Input carried in the work message, or a claim check of an image.
JobInput = types_pb2.Input | events_pb2.ObjectRef

# A job created without a priority runs, and is recorded, at normal priority.
_NORMAL = types_pb2.PRIORITY_NORMAL
# Room left in a NATS message for the JobItem's other fields and the headers (msg id, traceparent).
_ITEM_HEADROOM_BYTES = 4096
# Room left in one SubmitJob call for its other fields (tenant, job) beside the items.
_SUBMIT_HEADROOM_BYTES = 64 * 1024


class JobQueueClient:
    """The jobs service's JobQueueService, every call with the jobs backend's deadline and errors.

    Args:
        stub: the JobQueueService stub (a channel balanced over every jobs replica).
        backend: deadline, retries and error mapping of the calls.
        max_message_bytes: the largest call sent: a job's items go in as many SubmitJob calls as
            they need (URL images fetched here can make a job larger than the request that named it).
        results_backend: the same channel with the longer deadline of WriteResultFile (a large
            job's file takes a while to build); ``backend`` when not given.
    """

    def __init__(
        self,
        stub: job_queue_service_pb2_grpc.JobQueueServiceStub,
        backend: Backend,
        max_message_bytes: int,
        results_backend: Backend | None = None,
    ) -> None:
        self._stub = stub
        self._backend = backend
        self._results_backend = results_backend or backend
        self._budget = max(1, max_message_bytes - _SUBMIT_HEADROOM_BYTES)

    async def submit(self, tenant: str, job: job_pb2.Job, inputs: Sequence[JobInput]) -> job_pb2.Job:
        """Records ``job`` and queues its items, in parts of at most the message budget each.

        Each part records (or finds) the same job and queues its own items under their msg ids,
        so a retry of the whole, or of a part, queues nothing twice.
        """
        recorded = job
        for first, items in _parts(inputs, self._budget):
            answer: queue_pb2.SubmitJobResponse = await self._backend.call(
                self._stub.SubmitJob,
                queue_pb2.SubmitJobRequest(tenant=tenant, job=job, first_item_index=first, items=items),
            )
            recorded = answer.job
            if recorded.state in FINISHED:
                break  # nothing left to queue
        return recorded

    async def submit_manifest(
        self, tenant: str, job: job_pb2.Job, expansion: events_pb2.JobExpansion
    ) -> job_pb2.Job:
        """Records a job by manifest EXPANDING and queues its expansion; answers at once."""
        answer: queue_pb2.SubmitManifestJobResponse = await self._backend.call(
            self._stub.SubmitManifestJob,
            queue_pb2.SubmitManifestJobRequest(tenant=tenant, job=job, expansion=expansion),
        )
        return answer.job

    async def submit_notebook(
        self, tenant: str, job: job_pb2.Job, run: events_pb2.NotebookRun
    ) -> job_pb2.Job:
        """Records and queues a notebook job (the queue counts its cells)."""
        answer: queue_pb2.SubmitNotebookJobResponse = await self._backend.call(
            self._stub.SubmitNotebookJob,
            queue_pb2.SubmitNotebookJobRequest(tenant=tenant, job=job, notebook_run=run),
        )
        return answer.job

    async def cancel(self, tenant: str, name: str) -> job_pb2.Job:
        """Cancels the job ``name`` of ``tenant``; a finished one keeps its final state."""
        answer: queue_pb2.CancelJobResponse = await self._backend.call(
            self._stub.CancelJob, queue_pb2.CancelJobRequest(tenant=tenant, name=name)
        )
        return answer.job

    async def retry(self, tenant: str, name: str) -> job_service_pb2.RetryJobResponse:
        """Queues the failed items of the finished job ``name`` of ``tenant`` again."""
        answer: queue_pb2.RetryJobResponse = await self._backend.call(
            self._stub.RetryJob, queue_pb2.RetryJobRequest(tenant=tenant, name=name)
        )
        return job_service_pb2.RetryJobResponse(job=answer.job, items_retried=answer.items_retried)

    async def write_result_file(self, tenant: str, name: str) -> str:
        """Has the jobs service make the result file of the finished job ``name`` of ``tenant``
        (found, or built there); returns its name in the result store.

        A call that outlasts its deadline leaves the build running there: asking again waits for
        that build, it starts none.
        """
        answer: queue_pb2.WriteResultFileResponse = await self._results_backend.call(
            self._stub.WriteResultFile, queue_pb2.WriteResultFileRequest(tenant=tenant, name=name)
        )
        return answer.object_name


def _parts(inputs: Sequence[JobInput], budget: int) -> list[tuple[int, list[queue_pb2.ItemInput]]]:
    """Splits ``inputs`` into runs of consecutive items of at most ``budget`` bytes each (an item
    larger than that alone makes a part), as (index of the first, items)."""
    parts: list[tuple[int, list[queue_pb2.ItemInput]]] = []
    items: list[queue_pb2.ItemInput] = []
    first = size = 0
    for index, found in enumerate(inputs):
        item = (
            queue_pb2.ItemInput(input_ref=found)
            if isinstance(found, events_pb2.ObjectRef)
            else queue_pb2.ItemInput(input=found)
        )
        item_size = item.ByteSize() + 8  # the field's tag and length
        if items and size + item_size > budget:
            parts.append((first, items))
            items, first, size = [], index, 0
        items.append(item)
        size += item_size
    if items or not parts:  # no inputs at all: one empty part, which the queue refuses (EMPTY_JOB)
        parts.append((first, items))
    return parts


class JobManager:
    """Runs ``JobService.CreateJob``, ``CancelJob`` and ``RetryJob`` for a tenant: checks them,
    then hands them to the job queue (``JobQueueClient``)."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: store_service_pb2_grpc.StoreServiceStub,
        backend: Backend,
        catalog: ModelCatalog,
        nc: NatsClient,
        js: JetStreamContext,
        queue: JobQueueClient,
        request_ids: RequestIds,
    ) -> None:
        self._settings = settings
        self._request_ids = request_ids
        self._catalog = catalog
        self._nc = nc
        self._js = js
        self._queue = queue
        self._records = Records(store, backend)
        self._result_files = result_store(settings.results_url, js)
        self.results = JobResults(queue.write_result_file, self._result_files)
        """The jobs' result files, made by the job queue (GetJobResults, and WatchJob when it sees
        a job end)."""
        self.uploads = Uploads(js, settings)
        """Manifests and zips that jobs name by reference (CreateUpload, CreateJob.manifest)."""

    def max_item_bytes(self) -> int:
        """The largest image (or serialized payload or tensor) a job input may carry: the image
        limit, or less if NATS takes less (each item travels as one work message)."""
        return min(self._settings.max_image_bytes, self._nc.max_payload - _ITEM_HEADROOM_BYTES)

    async def create(
        self, tenant: str, request: job_service_pb2.CreateJobRequest, edge: Edge | None = None
    ) -> job_pb2.Job:
        """Validates a job and has the job queue record and queue it; a repeated ``request_id``
        returns the same job.

        Without a ``request_id``, ``edge`` (see ``idempotency``) makes the edge's own resend of
        this request return the same job too.

        Raises:
            FerryError: the request is invalid, the model unknown, the request_id used for a
                different job, or store, jobs or JetStream unavailable.
        """
        if request.notebook:  # a notebook instead of a model and inputs: see notebook_jobs.py
            job, run = notebook_jobs.checked(tenant, request, edge)
            parts = ("notebook", run.notebook, job.priority, run.parameters)
            return await self._claimed(
                tenant, job.request_id, parts, lambda: self._queue.submit_notebook(tenant, job, run)
            )
        if request.parameters.fields:
            raise InvalidArgument(
                "parameters are a notebook's; name the notebook too (notebook), or leave parameters empty",
                reason="INVALID_NOTEBOOK_JOB",
                metadata={"field": "parameters"},
            )
        s = self._settings
        model = validation.model_id(request.model)
        top_k = validation.top_k(request.top_k, s.default_top_k, s.max_top_k)
        request_id = validation.request_id(request.request_id)
        priority = types_pb2.Priority.Name(
            validation.enum_value(request.priority, types_pb2.Priority, "priority") or _NORMAL
        )
        if request.manifest and request.inputs:
            raise InvalidArgument(
                "send either inputs or manifest, not both",
                reason="INVALID_MANIFEST",
                metadata={"field": "manifest"},
            )
        # The model first: an unknown one is refused before anything is fetched or stored.
        served = await self._catalog.get(model)
        refuse_failed(served)
        job_id = job_id_for_request(tenant, request_id) if request_id else new_id("job", tenant, edge)
        wanted = job_pb2.Job(
            name=f"jobs/{job_id}",
            model=validation.model_name(model),
            top_k=top_k,
            request_id=request_id,
            trace_id=current_trace_id(),
            priority=priority,
        )
        if request.manifest:
            manifest = request.manifest
            return await self._claimed(
                tenant,
                request_id,
                (model, top_k, priority, "manifest", manifest),
                lambda: self._create_expanding(tenant, manifest, served, wanted),
            )
        inputs = await self._inputs(request)
        refuse_inputs_none_taken(served, inputs)
        wanted.items_total = len(inputs)
        return await self._claimed(
            tenant,
            request_id,
            (model, top_k, priority, "inputs", *inputs),  # their contents: images by URL fetched
            lambda: self._queue.submit(tenant, wanted, inputs),
        )

    async def _claimed(
        self,
        tenant: str,
        request_id: str,
        parts: Sequence[Part],
        submit: Callable[[], Awaitable[job_pb2.Job]],
    ) -> job_pb2.Job:
        """Runs ``submit`` once ``request_id`` (if any) is claimed for a request of ``parts``.

        Raises:
            FerryError: REQUEST_ID_REUSED (the request_id came with another job's request: nothing
                is submitted), or what ``submit`` raised.
        """
        claim = self._request_ids.claim("job", tenant, request_id, digest("job", parts))
        try:
            await claim.held()
            return await submit()
        except BaseException as err:
            await claim.settle(err)
            raise

    async def _inputs(self, request: job_service_pb2.CreateJobRequest) -> Sequence[types_pb2.Input]:
        """The job's checked inline inputs (images by URL fetched into bytes, once)."""
        s = self._settings
        if len(request.inputs) <= s.max_job_items:
            get = fetcher.fetcher_for(s, self.max_item_bytes())
            await fetcher.inline_images(fetcher.input_images(request.inputs), get)
        validation.job_inputs(request.inputs, s.max_job_items, self.max_item_bytes())
        return request.inputs

    async def _create_expanding(
        self, tenant: str, manifest: str, served: model_pb2.Model, wanted: job_pb2.Job
    ) -> job_pb2.Job:
        """Has the job queue record a job by manifest EXPANDING and expand it; answers at once.

        Only what is cheap is checked here (the upload exists, is the tenant's, makes no more
        items than a job takes, and a zip's images go to a model that takes images); a line that
        is not a valid item fails the job while it expands (FAILED, its error naming the line:
        see services/jobs/expander.py).
        """
        s = self._settings
        index = await self.uploads.index(tenant, manifest)
        count = len(index.entries) if index.kind == ZIP else index.lines
        validation.manifest_items(count, s.max_job_items, manifest)
        if index.kind == ZIP:
            # Its index says every item is an image: for a text model (`ferry job --manifest
            # uploads/<zip> --model minilm`) the job was accepted, then failed as it expanded.
            validation.some_input_taken(served.name, served.input_kinds, {"image"}, count)
        expansion = events_pb2.JobExpansion(
            manifest=manifest,
            input_kinds=served.input_kinds,
            max_items=s.max_job_items,
            max_item_bytes=self.max_item_bytes(),
            max_image_bytes=s.max_image_bytes,
            upload_quota_bytes=s.upload_quota_bytes,
        )
        return await self._queue.submit_manifest(tenant, wanted, expansion)

    async def notebook(self, tenant: str, name: str) -> job_service_pb2.GetJobNotebookResponse:
        """The executed notebook of the finished notebook job ``name`` (GetJobNotebook)."""
        return await notebook_jobs.executed_notebook(self._records, self._result_files, tenant, name)

    async def cancel(self, tenant: str, name: str) -> job_pb2.Job:
        """Cancels the job ``jobs/{id}`` of ``tenant`` (the job queue tells the runners to skip its
        items). Returns the job; a job that had already finished keeps its final state."""
        job_id = validation.resource_id(name, "jobs")
        return await self._queue.cancel(tenant, f"jobs/{job_id}")

    async def list_items(
        self, tenant: str, request: job_service_pb2.ListJobItemsRequest
    ) -> job_service_pb2.ListJobItemsResponse:
        """A page of a job's recorded items; failed ones say whether RetryJob can run them again."""
        return await list_job_items(self._records, self._js, tenant, request)

    async def retry(self, tenant: str, name: str) -> job_service_pb2.RetryJobResponse:
        """Queues the failed items of the finished job ``jobs/{id}`` of ``tenant`` again (the job
        queue re-queues them from their dead letters; see ``services.jobs.submission``).

        Raises:
            FerryError: unknown job, a job that is cancelled or still running, or an outage.
        """
        job_id = validation.resource_id(name, "jobs")
        return await self._queue.retry(tenant, f"jobs/{job_id}")


def refuse_inputs_none_taken(model: model_pb2.Model, inputs: Sequence[types_pb2.Input]) -> None:
    """Refuses a job none of whose inputs ``model`` takes (``validation.some_input_taken``).

    Raises:
        InvalidArgument: UNSUPPORTED_INPUT, naming what the model takes and what the job holds.
    """
    kinds = {i.WhichOneof("kind") or "empty" for i in inputs}
    validation.some_input_taken(model.name, model.input_kinds, kinds, len(inputs))
