"""The job queue's owner: records jobs in store and publishes their items to the work stream.

Every job reaches the work stream through here (``JobQueueService``, called by the gateway once
it has validated the request, resolved the tenant and checked the model): the store write, the
subjects, the msg ids (``{job id}:{index}``, and ``:g{generation}`` for a retry's re-queue), the
pipelined publishing, the dead-letter re-queue of RetryJob and the notebook hand-off. A repeated
call lands on the same job and the same msg ids, so a retry after a crash anywhere (gateway,
jobs, NATS) completes the queueing and stores no item twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from ferry.events.v1 import events_pb2
from ferry.jobqueue.v1 import job_queue_service_pb2 as queue_pb2
from ferry.jobs.v1 import job_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common import messaging
from services.common.downstream import Backend, publishing
from services.common.errors import AlreadyExists, InvalidArgument, status_to_proto
from services.common.failpoints import failpoint
from services.common.ids import item_record_id
from services.common.job_states import FINISHED
from services.common.notebooks import code_cell_count, model_of
from services.common.publisher import Publisher
from services.common.tracing import current_trace_id, inject_headers
from services.jobs.cancellation import mark_cancelled
from services.jobs.settings import JobsSettings

log = logging.getLogger(__name__)

#: One job item's input: an Input carried in the work message, or a claim check of an image.
JobInput = types_pb2.Input | events_pb2.ObjectRef
# A job created without a priority runs, and is recorded, at normal priority.
_NORMAL = types_pb2.PRIORITY_NORMAL


class JobQueue:
    """Submits, cancels and retries jobs: store first, then the work stream.

    Args:
        settings: the jobs service's settings (publish budget and window, notebook registry).
        store: store's stub; ``store_backend`` gives its calls deadlines and error mapping.
        js: JetStream, for dead letters (RetryJob reads them back).
        publisher: publishes with retries within the publish budget.
        cancelled: the KV bucket runners read cancelled jobs from.
    """

    def __init__(
        self,
        settings: JobsSettings,
        store: store_service_pb2_grpc.StoreServiceStub,
        store_backend: Backend,
        js: JetStreamContext,
        publisher: Publisher,
        cancelled: KeyValue,
    ) -> None:
        self._settings = settings
        self._store = store
        self._backend = store_backend
        self._js = js
        self._publisher = publisher
        self._cancelled = cancelled

    async def submit(
        self, tenant: str, wanted: job_pb2.Job, first_index: int, inputs: Sequence[JobInput]
    ) -> job_pb2.Job:
        """Records ``wanted`` (or finds it) and queues items ``first_index..`` of it.

        Raises:
            FerryError: the name was recorded for a different request (REQUEST_ID_REUSED), or
                store or JetStream unavailable (a retry with the same request completes it).
        """
        job = await self._record(tenant, wanted)
        if job.state in FINISHED:
            return job  # nothing left to queue
        # The crash this design must survive: recorded, nothing queued (tests/faults case 9).
        failpoint("jobs.submit_after_record")
        # Also when the job already existed: a retry after a crash mid-publish completes the
        # queueing, and JetStream drops the items that did arrive (same Nats-Msg-Id).
        what = f"job {job.name} was recorded but not all of its inputs could be queued; " + (
            "retry with the same request_id to finish queueing them"
            if wanted.request_id
            else "send the job again with a request_id so that a retry completes it"
        )
        template = events_pb2.JobItem(
            tenant=tenant,
            job_id=wanted.name.removeprefix("jobs/"),
            model=wanted.model.removeprefix("models/"),
            top_k=wanted.top_k,
            priority=wanted.priority or _NORMAL,
        )
        async with publishing(what):
            await publish_job_items(
                self._publisher, template, inputs, self._settings.max_publish_inflight, first_index
            )
        return job

    async def submit_manifest(
        self, tenant: str, wanted: job_pb2.Job, expansion: events_pb2.JobExpansion
    ) -> job_pb2.Job:
        """Records ``wanted`` EXPANDING (or finds it) and queues the expansion of its manifest
        (``expander.py`` reads it into items); returns at once.

        Raises:
            FerryError: the name was recorded for a different request (REQUEST_ID_REUSED), or
                store or JetStream unavailable (a retry with the same request completes it).
        """
        job = await self._record(tenant, wanted, job_pb2.JOB_STATE_EXPANDING)
        if job.state != job_pb2.JOB_STATE_EXPANDING:
            return job  # expanded already
        request = events_pb2.JobExpansion()
        request.CopyFrom(expansion)
        request.tenant = tenant
        request.job_id = wanted.name.removeprefix("jobs/")
        request.model = wanted.model.removeprefix("models/")
        request.top_k = wanted.top_k
        request.priority = wanted.priority or _NORMAL
        # Also when the job already existed: a crash between recording it and queueing its
        # expansion is completed by the retry (a request queued twice is one: its msg id).
        what = f"job {job.name} was recorded but its expansion could not be queued; " + (
            "retry with the same request_id to queue it"
            if wanted.request_id
            else "send the job again with a request_id so that a retry completes it"
        )
        async with publishing(what):
            await self._publisher.publish(messaging.EXPANSIONS_SUBJECT, request, f"expand:{request.job_id}")
        return job

    async def submit_notebook(
        self, tenant: str, wanted: job_pb2.Job, run: events_pb2.NotebookRun
    ) -> job_pb2.Job:
        """Records a notebook job (its items: the notebook's code cells) and queues it as one run.

        Raises:
            FerryError: an unknown notebook (NOTEBOOK_NOT_FOUND), one with no code cell, a reused
                request_id, or store or JetStream unavailable.
        """
        cells = code_cell_count(self._settings.notebook_path(run.notebook))
        if cells < 1:
            raise InvalidArgument(
                f"notebook {run.notebook!r} has no code cell to run",
                reason="INVALID_NOTEBOOK_JOB",
                metadata={"field": "notebook"},
            )
        recorded = job_pb2.Job()
        recorded.CopyFrom(wanted)
        # Users see the notebook as the job's model (GET /v1/jobs/{id}: "models/notebook:report").
        recorded.model = f"models/{model_of(run.notebook)}"
        recorded.items_total = cells
        recorded.top_k = 0
        job = await self._record(tenant, recorded)
        job_id = wanted.name.removeprefix("jobs/")
        item = events_pb2.JobItem(
            tenant=tenant,
            job_id=job_id,
            item_index=0,
            priority=wanted.priority or _NORMAL,
            notebook_run=run,
        )
        what = f"notebook job {job.name} was recorded but could not be queued; retry with the same request_id"
        async with publishing(what):  # the same msg id again for a retry: JetStream drops the copy
            await self._publisher.publish(self._settings.notebook_subject, item, f"{job_id}:notebook")
        return job

    async def _record(
        self, tenant: str, wanted: job_pb2.Job, state: int = job_pb2.JOB_STATE_QUEUED
    ) -> job_pb2.Job:
        """Records ``wanted`` in store (in ``state``: QUEUED, or EXPANDING for a job by manifest),
        or returns the job already recorded under its name."""
        job = job_pb2.Job()
        job.CopyFrom(wanted)
        job.state = state  # type: ignore[assignment]  # a JobState number
        job.priority = job.priority or _NORMAL
        job.trace_id = job.trace_id or current_trace_id()
        answer: store_service_pb2.CreateJobResponse = await self._backend.call(
            self._store.CreateJob, store_service_pb2.CreateJobRequest(tenant=tenant, job=job)
        )
        if not answer.created:
            check_same_request(answer.job, job)
        return answer.job

    async def cancel(self, tenant: str, job_id: uuid.UUID) -> job_pb2.Job:
        """Cancels the job of ``tenant`` and tells the runners to skip its items.

        Returns the job; a job that had already finished keeps its final state.
        """
        answer: store_service_pb2.CancelJobResponse = await self._backend.call(
            self._store.CancelJob, store_service_pb2.CancelJobRequest(tenant=tenant, id=str(job_id))
        )
        if answer.job.state == job_pb2.JOB_STATE_CANCELLED:
            what = f"job jobs/{job_id} is cancelled but runners may still run its remaining items; retry"
            async with publishing(what):
                await mark_cancelled(self._cancelled, job_id, self._settings.submit_publish_timeout_s)
        return answer.job

    async def retry(self, tenant: str, job_id: uuid.UUID) -> queue_pb2.RetryJobResponse:
        """Queues the failed items of the finished job of ``tenant`` again.

        Store marks the failed items pending under a new generation (or returns the ones still
        pending from an earlier call); each is re-queued from its dead letter with a msg id of that
        generation, so repeating the call queues nothing twice. An item whose dead letter expired
        gets a FAILED record of the new generation, which settles it.

        Raises:
            FerryError: unknown job, a job that is cancelled or still running, or an outage.
        """
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
        return queue_pb2.RetryJobResponse(job=answer.job, items_retried=len(answer.item_indexes))

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
    first_index: int = 0,
    names: Sequence[str] = (),
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
        first_index: the index in the job of ``inputs[0]`` (a job submitted in several parts).
        names: the inputs' names (``JobItem.input_name``) for items of an upload, in the same
            order; empty for inputs listed in CreateJob.

    Raises:
        nats.errors.Error, TimeoutError: a publish failed; the others are cancelled.
    """
    subject = items_subject(template.priority)

    def item_of(index: int) -> events_pb2.JobItem:
        # Built when sent: the item (a copy of the image) exists only while it is in flight.
        item = events_pb2.JobItem()
        item.CopyFrom(template)
        item.item_index = index
        found = inputs[index - first_index]
        if isinstance(found, events_pb2.ObjectRef):
            item.input_ref.CopyFrom(found)  # a claim check: the runner reads the bytes
        else:
            item.input.CopyFrom(found)
        if names:
            item.input_name = names[index - first_index]
        return item

    async def publish_one(index: int) -> None:
        await publisher.publish(subject, item_of(index), f"{template.job_id}:{index}")

    unacked = await _publish_pipelined(
        publisher.js,
        subject,
        template.job_id,
        range(first_index, first_index + len(inputs)),
        item_of,
        max_inflight,
        publisher.budget_s,
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
    indexes: range,
    item_of: Callable[[int], events_pb2.JobItem],
    window: int,
    timeout_s: float,
) -> list[int]:
    """Sends the items of ``indexes`` with JetStream's async publish, at most ``window`` unacknowledged
    at once, and waits up to ``timeout_s`` for the acks; returns the indexes not acknowledged.

    Nothing here retries or raises on a NATS failure: whatever was not acknowledged is the
    caller's to publish again (the msg ids make a copy that did land a duplicate, dropped).
    """
    headers = inject_headers({})  # the CreateJob's traceparent: the same for every item
    room = asyncio.Semaphore(window)
    sent: list[tuple[int, asyncio.Future[PubAck]]] = []
    try:
        for index in indexes:
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
    return [index for index in indexes if index not in acked]


def items_subject(priority: int) -> str:
    """The work subject of items of ``priority`` (a ferry.types.v1.Priority), as runners split them."""
    return messaging.job_items_subject(messaging.priority_token(priority))


def check_same_request(existing: job_pb2.Job, wanted: job_pb2.Job) -> None:
    """Refuses a request_id reused for a different job (another model, input count, top_k or priority).

    A job by manifest (``wanted`` EXPANDING) has no input count until it is expanded: not compared.
    """
    by_manifest = wanted.state == job_pb2.JOB_STATE_EXPANDING
    if (
        existing.model,
        by_manifest or existing.items_total,
        existing.top_k,
        existing.priority or _NORMAL,
    ) != (
        wanted.model,
        by_manifest or wanted.items_total,
        wanted.top_k,
        wanted.priority or _NORMAL,
    ):
        priority = types_pb2.Priority.Name(existing.priority or _NORMAL)
        raise AlreadyExists(
            f"request_id {wanted.request_id!r} was already used for {existing.name} "
            f"({existing.model}, {existing.items_total} inputs, top_k {existing.top_k}, {priority}); "
            "use a new request_id for a different job",
            reason="REQUEST_ID_REUSED",
            metadata={"job": existing.name},
        )
