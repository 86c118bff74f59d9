"""Creating, cancelling and retrying jobs: record the job in store, queue its items on JetStream."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.models.v1 import model_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common import messaging
from services.common.errors import AlreadyExists, InvalidArgument, status_to_proto
from services.common.ids import item_record_id, job_id_for_request
from services.common.result_stores import result_store
from services.common.tracing import current_trace_id, inject_headers
from services.gateway import fetcher, manifests, notebook_jobs, validation
from services.gateway.cancellation import mark_cancelled
from services.gateway.catalog import ModelCatalog
from services.gateway.downstream import Backend, publishing
from services.gateway.idempotency import Edge, new_id
from services.gateway.job_items import list_job_items
from services.gateway.job_results import JobResults
from services.gateway.manifests import JobInput
from services.gateway.publisher import Publisher
from services.gateway.records import Records
from services.gateway.settings import GatewaySettings
from services.gateway.uploads import Uploads

log = logging.getLogger(__name__)

# A job created without a priority runs, and is recorded, at normal priority.
_NORMAL = types_pb2.PRIORITY_NORMAL
# Room left in a NATS message for the JobItem's other fields and the headers (msg id, traceparent).
_ITEM_HEADROOM_BYTES = 4096
#: States a job does not leave by itself (only RetryJob reopens a finished one).
FINISHED = frozenset(
    {
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
    }
)


class JobManager:
    """Runs ``JobService.CreateJob`` and ``CancelJob`` for a tenant."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: store_service_pb2_grpc.StoreServiceStub,
        backend: Backend,
        catalog: ModelCatalog,
        nc: NatsClient,
        js: JetStreamContext,
        publisher: Publisher,
        cancelled: KeyValue,
    ) -> None:
        self._settings = settings
        self._store = store
        self._backend = backend
        self._catalog = catalog
        self._nc = nc
        self._js = js
        self._publisher = publisher
        self._cancelled = cancelled
        self._records = Records(store, backend)
        self._result_files = result_store(settings.results_url, js)
        self.results = JobResults(self._records, self._result_files)
        """The jobs' result files (GetJobResults, and WatchJob when it sees a job end)."""
        self.uploads = Uploads(js, settings)
        """Manifests and zips that jobs name by reference (CreateUpload, CreateJob.manifest)."""

    def max_item_bytes(self) -> int:
        """The largest image (or serialized payload or tensor) a job input may carry: the image
        limit, or less if NATS takes less (each item travels as one work message)."""
        return min(self._settings.max_image_bytes, self._nc.max_payload - _ITEM_HEADROOM_BYTES)

    async def create(
        self, tenant: str, request: job_service_pb2.CreateJobRequest, edge: Edge | None = None
    ) -> job_pb2.Job:
        """Validates, records and queues a job; a repeated ``request_id`` returns the same job.

        Without a ``request_id``, ``edge`` (see ``idempotency``) makes the edge's own resend of
        this request return the same job too.

        Raises:
            FerryError: the request is invalid, the model unknown, the request_id used for a
                different job, or store or JetStream unavailable.
        """
        if request.notebook:  # a notebook instead of a model and inputs: see notebook_jobs.py
            return await notebook_jobs.create(
                self._settings,
                self._backend,
                self._store,
                self._publisher,
                tenant,
                request,
                edge,
                _check_same_request,
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
        # The model first: an unknown one is refused before anything is fetched or stored.
        served = await self._catalog.get(model)
        inputs = await self._inputs(tenant, request)
        refuse_inputs_none_taken(served, inputs)

        job_id = job_id_for_request(tenant, request_id) if request_id else new_id("job", tenant, edge)
        wanted = job_pb2.Job(
            name=f"jobs/{job_id}",
            model=validation.model_name(model),
            state=job_pb2.JOB_STATE_QUEUED,
            items_total=len(inputs),
            top_k=top_k,
            request_id=request_id,
            trace_id=current_trace_id(),
            priority=priority,
        )
        answer: store_service_pb2.CreateJobResponse = await self._backend.call(
            self._store.CreateJob, store_service_pb2.CreateJobRequest(tenant=tenant, job=wanted)
        )
        job = answer.job
        if not answer.created:
            _check_same_request(job, wanted)
            if job.state in FINISHED:
                return job  # nothing left to queue
        # Also when the job already existed: a retry after a crash mid-publish completes the
        # queueing, and JetStream drops the items that did arrive (same Nats-Msg-Id).
        what = f"job jobs/{job_id} was recorded but not all of its inputs could be queued; " + (
            "retry with the same request_id to finish queueing them"
            if request_id
            else "send the job again with a request_id so that a retry completes it"
        )
        async with publishing(what):
            await publish_job_items(
                self._publisher,
                events_pb2.JobItem(
                    tenant=tenant, job_id=str(job_id), model=model, top_k=top_k, priority=priority
                ),
                inputs,
                max_inflight=s.max_publish_inflight,
            )
        return job

    async def _inputs(self, tenant: str, request: job_service_pb2.CreateJobRequest) -> Sequence[JobInput]:
        """The job's checked inputs: inline ones (URLs fetched into bytes), or the manifest's
        (images as claim checks; texts, payloads and tensors as Inputs)."""
        s = self._settings
        get = fetcher.fetcher_for(s, self.max_item_bytes())
        if request.manifest:
            if request.inputs:
                raise InvalidArgument(
                    "send either inputs or manifest, not both",
                    reason="INVALID_MANIFEST",
                    metadata={"field": "manifest"},
                )
            return await manifests.expand(
                self.uploads, tenant, request.manifest, get, s.max_job_items, self.max_item_bytes()
            )
        if len(request.inputs) <= s.max_job_items:  # images by URL are fetched here, once
            await fetcher.inline_images(fetcher.input_images(request.inputs), get)
        validation.job_inputs(request.inputs, s.max_job_items, self.max_item_bytes())
        return request.inputs

    async def notebook(self, tenant: str, name: str) -> job_service_pb2.GetJobNotebookResponse:
        """The executed notebook of the finished notebook job ``name`` (GetJobNotebook)."""
        return await notebook_jobs.executed_notebook(self._records, self._result_files, tenant, name)

    async def cancel(self, tenant: str, name: str) -> job_pb2.Job:
        """Cancels the job ``jobs/{id}`` of ``tenant`` and tells the runners to skip its items.

        Returns the job; a job that had already finished keeps its final state.
        """
        job_id = validation.resource_id(name, "jobs")
        answer: store_service_pb2.CancelJobResponse = await self._backend.call(
            self._store.CancelJob, store_service_pb2.CancelJobRequest(tenant=tenant, id=str(job_id))
        )
        if answer.job.state == job_pb2.JOB_STATE_CANCELLED:
            what = f"job jobs/{job_id} is cancelled but runners may still run its remaining items; retry"
            async with publishing(what):
                await mark_cancelled(self._cancelled, job_id, self._settings.publish_timeout_s)
        return answer.job

    async def list_items(
        self, tenant: str, request: job_service_pb2.ListJobItemsRequest
    ) -> job_service_pb2.ListJobItemsResponse:
        """A page of a job's recorded items; failed ones say whether RetryJob can run them again."""
        return await list_job_items(self._records, self._js, tenant, request)

    async def retry(self, tenant: str, name: str) -> job_service_pb2.RetryJobResponse:
        """Queues the failed items of the finished job ``jobs/{id}`` of ``tenant`` again.

        Store marks the failed items pending under a new generation (or returns the ones still
        pending from an earlier call); each is re-queued from its dead letter with a msg id of that
        generation, so repeating the call queues nothing twice. An item whose dead letter expired
        gets a FAILED record of the new generation, which settles it.

        Raises:
            FerryError: unknown job, a job that is cancelled or still running, or an outage.
        """
        job_id = validation.resource_id(name, "jobs")
        answer: store_service_pb2.RetryJobResponse = await self._backend.call(
            self._store.RetryJob, store_service_pb2.RetryJobRequest(tenant=tenant, id=str(job_id))
        )
        what = f"job jobs/{job_id} was marked for retry but not all of its items could be queued; retry"
        async with publishing(what):
            await _bounded_gather(
                [
                    self._requeue(tenant, answer.job, job_id, i, answer.generation)
                    for i in answer.item_indexes
                ],
                self._settings.max_publish_inflight,
            )
        return job_service_pb2.RetryJobResponse(job=answer.job, items_retried=len(answer.item_indexes))

    async def _requeue(
        self, tenant: str, job: job_pb2.Job, job_id: uuid.UUID, index: int, generation: int
    ) -> None:
        try:
            dead = await self._js.get_last_msg(
                messaging.DEAD_STREAM, messaging.dead_letter_subject(str(job_id), index)
            )
        except NotFoundError:
            await self._settle_expired(tenant, job, job_id, index, generation)
            return
        item = events_pb2.JobItem.FromString(dead.data or b"")
        item.generation = generation
        msg_id = messaging.with_generation(f"{job_id}:{index}", generation)
        await self._publisher.publish(items_subject(item.priority), item, msg_id)

    async def _settle_expired(
        self, tenant: str, job: job_pb2.Job, job_id: uuid.UUID, index: int, generation: int
    ) -> None:
        log.warning(
            "job %s item %d has no dead letter left to retry; recording it failed again", job_id, index
        )
        record_id = item_record_id(job_id, index)
        prediction = prediction_pb2.Prediction(
            name=f"predictions/{record_id}",
            model=job.model,
            job=job.name,
            item_index=index,
            state=prediction_pb2.PREDICTION_STATE_FAILED,
            error=status_to_proto(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"item {index} cannot run again: its input is kept for {messaging.DEAD_LETTER_DAYS} days "
                "after it failed, and that time has passed; submit it in a new job",
                "INPUT_EXPIRED",
            ),
            trace_id=current_trace_id(),
        )
        prediction.create_time.GetCurrentTime()
        event = events_pb2.PredictionRecorded(tenant=tenant, prediction=prediction, generation=generation)
        msg_id = messaging.with_generation(str(record_id), generation)
        await self._publisher.publish(messaging.PREDICTIONS_SUBJECT, event, msg_id)


async def _bounded_gather(coros: Sequence[Coroutine[Any, Any, None]], limit: int) -> None:
    """Runs ``coros`` at most ``limit`` at a time; the first failure cancels the rest and is raised."""
    slots = asyncio.Semaphore(limit)

    async def one(coro: Coroutine[Any, Any, None]) -> None:
        async with slots:
            await coro

    tasks = [asyncio.create_task(one(c)) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def publish_job_items(
    publisher: Publisher,
    template: events_pb2.JobItem,
    inputs: Sequence[JobInput],
    max_inflight: int,
) -> None:
    """Publishes one JobItem per input to the work stream and waits for every ack.

    Each message's ``Nats-Msg-Id`` is ``"{job_id}:{index}"``, so publishing a job's items again
    (a client's retry) stores none of them twice inside JetStream's duplicate window.

    The items go out pipelined first (``_publish_pipelined``: no task and no request per item,
    about 3x the rate of awaiting each publish); any item that pass did not get acknowledged is
    then published again, one ``publisher.publish`` (with retries) each, under the same msg id.

    Args:
        publisher: publishes with retries.
        template: the fields every item shares (tenant, job_id, model, top_k, priority); the
            priority picks the subject, ``ferry.jobs.items.<priority>``.
        inputs: the job's inputs, in order: Inputs, or claim checks of images (``input_ref``).
        max_inflight: most publishes awaiting their ack at once.

    Raises:
        nats.errors.Error, TimeoutError: a publish failed; the others are cancelled.
    """
    subject = items_subject(template.priority)

    def item_of(index: int) -> events_pb2.JobItem:
        # Built when sent: the item (a copy of the image) exists only while it is in flight.
        item = events_pb2.JobItem()
        item.CopyFrom(template)
        item.item_index = index
        found = inputs[index]
        if isinstance(found, events_pb2.ObjectRef):
            item.input_ref.CopyFrom(found)  # a claim check: the runner reads the bytes
        else:
            item.input.CopyFrom(found)
        return item

    async def publish_one(index: int) -> None:
        await publisher.publish(subject, item_of(index), f"{template.job_id}:{index}")

    unacked = await _publish_pipelined(
        publisher.js, subject, template.job_id, len(inputs), item_of, max_inflight, publisher.budget_s
    )
    if unacked:
        log.info(
            "job %s: %d items not acknowledged at once; publishing them again", template.job_id, len(unacked)
        )
    await _bounded_gather([publish_one(index) for index in unacked], max_inflight)


async def _publish_pipelined(
    js: JetStreamContext,
    subject: str,
    job_id: str,
    count: int,
    item_of: Callable[[int], events_pb2.JobItem],
    window: int,
    timeout_s: float,
) -> list[int]:
    """Sends items ``0..count-1`` with JetStream's async publish, at most ``window`` unacknowledged
    at once, and waits up to ``timeout_s`` for the acks; returns the indexes not acknowledged.

    Nothing here retries or raises on a NATS failure: whatever was not acknowledged is the
    caller's to publish again (the msg ids make a copy that did land a duplicate, dropped).
    """
    headers = inject_headers({})  # the CreateJob's traceparent: the same for every item
    room = asyncio.Semaphore(window)
    sent: list[tuple[int, asyncio.Future[PubAck]]] = []
    try:
        for index in range(count):
            await room.acquire()
            payload = item_of(index).SerializeToString()
            try:
                future = await js.publish_async(
                    subject, payload, headers={**headers, "Nats-Msg-Id": f"{job_id}:{index}"}
                )
            except BaseException:
                room.release()
                raise
            future.add_done_callback(lambda _: room.release())
            sent.append((index, future))
    except (NatsError, TimeoutError) as err:
        log.warning("job %s: pipelined publishing stopped after %d items: %r", job_id, len(sent), err)
    if sent:
        await asyncio.wait([future for _, future in sent], timeout=timeout_s)
    acked = set()
    for index, future in sent:
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None:
            acked.add(index)
    return [index for index in range(count) if index not in acked]


def refuse_inputs_none_taken(model: model_pb2.Model, inputs: Sequence[JobInput]) -> None:
    """Refuses a job none of whose inputs ``model`` takes (texts for an image model): every item
    would only fail. A job with some it takes runs, and the others fail one by one.

    Raises:
        InvalidArgument: UNSUPPORTED_INPUT, naming what the model takes and what the job holds.
    """
    takes = set(model.input_kinds)
    if not takes:  # not serving yet: inference judges each item when it runs
        return
    kinds = {
        "image" if isinstance(i, events_pb2.ObjectRef) else i.WhichOneof("kind") or "empty" for i in inputs
    }
    if kinds & takes:
        return
    raise InvalidArgument(
        f"{model.name} takes {' or '.join(sorted(takes))} inputs and none of this job's {len(inputs)} "
        f"inputs is one (they are {', '.join(sorted(kinds))}); name a model that takes them "
        "(GET /v1/models lists each model's input_kinds)",
        reason="UNSUPPORTED_INPUT",
        metadata={"field": "model", "model": model.name, "input_kinds": ",".join(sorted(takes))},
    )


def items_subject(priority: int) -> str:
    """The work subject of items of ``priority`` (a ferry.types.v1.Priority), as runners split them."""
    return messaging.job_items_subject(messaging.priority_token(priority))


def _check_same_request(existing: job_pb2.Job, wanted: job_pb2.Job) -> None:
    """Refuses a request_id reused for a different job (another model, input count, top_k or priority)."""
    if (existing.model, existing.items_total, existing.top_k, existing.priority or _NORMAL) != (
        wanted.model,
        wanted.items_total,
        wanted.top_k,
        wanted.priority,
    ):
        priority = types_pb2.Priority.Name(existing.priority or _NORMAL)
        raise AlreadyExists(
            f"request_id {wanted.request_id!r} was already used for {existing.name} "
            f"({existing.model}, {existing.items_total} inputs, top_k {existing.top_k}, {priority}); "
            "use a new request_id for a different job",
            reason="REQUEST_ID_REUSED",
            metadata={"job": existing.name},
        )
