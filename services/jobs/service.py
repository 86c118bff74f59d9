"""The jobs service: the job queue's owner (``JobQueueService``, for the gateway) and the runners.

Its API records jobs in store and queues their items (``submission.py``); its runners take the
items from the work stream and run them. A process does both, or one (``roles``). Overall health
("") follows what the process's work needs (NATS, and inference for the runners); the API's own
health name follows only what the API needs (NATS), so jobs can still be submitted, cancelled and
retried while inference restarts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from ferry.inference.v1 import inference_service_pb2_grpc
from ferry.jobqueue.v1 import job_queue_service_pb2, job_queue_service_pb2_grpc
from ferry.store.v1 import store_service_pb2_grpc
from services.common import cpus, messaging
from services.common.channels import channel_options, open_channel
from services.common.downstream import Backend
from services.common.messaging import open_cancelled_bucket
from services.common.publisher import Publisher
from services.common.readiness import Probe, Readiness, watch_dependency
from services.common.result_stores import result_store
from services.common.tasks import spawn
from services.common.upload_store import UploadStore
from services.jobs.cancellation import CancelledJobs
from services.jobs.expander import Expander
from services.jobs.lanes import Room
from services.jobs.notebooks import NotebookRunner
from services.jobs.predictor import Predictor
from services.jobs.queue_metrics import watch_queues
from services.jobs.result_files import ResultFiles, StoreRecords
from services.jobs.runner import Runner
from services.jobs.servicer import JobQueueServicer
from services.jobs.settings import JobsSettings
from services.jobs.submission import JobQueue

log = logging.getLogger(__name__)

#: The job queue's gRPC service; its health name is what the gateway's balancer watches.
QUEUE_SERVICE = job_queue_service_pb2.DESCRIPTOR.services_by_name["JobQueueService"].full_name

# How often the runner looks at its dependencies, and how long one health check may take.
_PROBE_EVERY_S = 1.0
_PROBE_TIMEOUT_S = 2.0


def inference_probe(channel: grpc.aio.Channel) -> Probe:
    """Asks inference's gRPC health (the overall "" service) whether it is SERVING.

    The check does not wait for the channel to connect: a down inference must read as down now.
    """
    stub = health_pb2_grpc.HealthStub(channel)

    async def probe() -> str:
        try:
            answer = await stub.Check(  # type: ignore[attr-defined]  # the published stubs omit the methods
                health_pb2.HealthCheckRequest(service=""), timeout=_PROBE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            return f"health check failed: {err.code().name}: {err.details()}"
        if answer.status == health_pb2.HealthCheckResponse.SERVING:
            return ""
        return f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}"

    return probe


def nats_probe(nc: NatsClient) -> Probe:
    """Says whether the NATS connection is up (nats-py reconnects on its own meanwhile)."""

    async def probe() -> str:
        if nc.is_connected:
            return ""
        return "not connected (reconnecting)" if nc.is_reconnecting else "not connected"

    return probe


class JobsService:
    """Owns the job queue (its API) and runs job items from the work stream, as its ``roles`` say.

    SERVING ("") once NATS is connected and the consumers exist, and while NATS (and, for the
    runners, inference) are up; while it is not, the runners fetch no new items. The
    JobQueueService health name (and its calls) need NATS only.
    """

    name = "jobs"

    def __init__(self, settings: JobsSettings) -> None:
        self.settings = settings
        self._queue = JobQueueServicer()

    def service_names(self) -> Sequence[str]:
        """The job queue's internal API, where this process serves it (``roles``)."""
        return (QUEUE_SERVICE,) if self.settings.serves_queue else ()

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the job queue's servicer (it answers once ``start`` gave it its connections)."""
        if self.settings.serves_queue:
            job_queue_service_pb2_grpc.add_JobQueueServiceServicer_to_server(self._queue, server)

    async def start(self, stack: AsyncExitStack, readiness: Readiness) -> None:
        """Connects to NATS, then starts what the process's roles name: the job queue's API
        (store), and the runners (inference, the work consumers, the expander, notebooks).

        Cleanups run in reverse: the runner stops first (handing back unfinished items), then
        the probes stop, the channels close, and the NATS connection drains.
        """
        s = self.settings
        cpus.pin_process(cpus.parse(s.cpus))  # before it starts threads: they start pinned too
        nc, js = await messaging.connect(s.nats_url, "ferry-jobs", stack)
        await messaging.ensure_streams(js, s.nats_stream_replicas, s.nats_duplicate_window_s)
        bucket = await open_cancelled_bucket(js, s.nats_stream_replicas)
        await watch_dependency(stack, readiness, "nats", nats_probe(nc), _PROBE_EVERY_S)
        if s.serves_queue:
            self._queue.attach(*_job_queue(s, stack, js, bucket))
        if s.runs_work:
            await _start_work(s, stack, readiness, js, CancelledJobs(bucket, s.cancel_cache_s))


def _job_queue(
    s: JobsSettings, stack: AsyncExitStack, js: JetStreamContext, bucket: KeyValue
) -> tuple[JobQueue, ResultFiles]:
    """The job queue's API's backends: store, where jobs are recorded, the work stream, and the
    result files built from store's records into the result store."""
    store_channel = open_channel(s.store_target, s.max_message_bytes)
    stack.push_async_callback(store_channel.close)
    store = store_service_pb2_grpc.StoreServiceStub(store_channel)
    backend = Backend("store", store_channel, s.store_timeout_s)
    queue = JobQueue(s, store, backend, js, Publisher(js, s.submit_publish_timeout_s), bucket)
    files = ResultFiles(StoreRecords(store, backend), result_store(s.results_url, js))
    stack.push_async_callback(files.close)  # before the channel closes: builds stop first
    return queue, files


async def _start_work(
    s: JobsSettings,
    stack: AsyncExitStack,
    readiness: Readiness,
    js: JetStreamContext,
    cancelled: CancelledJobs,
) -> None:
    """Watches inference and starts the runners (a lane per priority), the manifest expander,
    the notebook runner and the queue gauges."""
    channel = open_channel(s.inference_target, s.max_message_bytes)
    stack.push_async_callback(channel.close)
    # Probes go on a channel of their own, without the tracing interceptor: a check every
    # second would otherwise make a trace every second (inference leaves health untraced
    # too). Same target and reconnect options, so it sees inference as the Predict calls do.
    probe_channel = grpc.aio.insecure_channel(s.inference_target, options=channel_options(1024 * 1024))
    stack.push_async_callback(probe_channel.close)
    await watch_dependency(
        stack, readiness, "inference", inference_probe(probe_channel), _PROBE_EVERY_S, background=True
    )
    predictor = Predictor(inference_service_pb2_grpc.InferenceServiceStub(channel), s.inference_timeout_s)
    await retire_catch_all_consumer(js, s)
    room = Room(s.max_inflight, s.fetch_batch)
    for priority, consumer, subjects in s.lanes():
        lane = s.model_copy(update={"consumer_name": consumer, "subject_filter": subjects})
        runner = Runner(js, predictor, cancelled, lane, readiness, room, priority)
        await runner.subscribe()
        spawn(stack, runner.run(), f"jobs-runner-{priority}")
    expander = Expander(js, cancelled, UploadStore(js, 0, s.nats_stream_replicas), s, readiness)
    await expander.subscribe()
    spawn(stack, expander.run(), "jobs-expander")
    if s.notebook_subject:
        notebooks = NotebookRunner(js, cancelled, result_store(s.results_url, js), s, readiness)
        await notebooks.subscribe()
        spawn(stack, notebooks.run(), "jobs-notebooks")
    lanes = [(priority, consumer) for priority, consumer, _ in s.lanes()]
    spawn(stack, watch_queues(js, lanes, s.queue_metrics_s), "jobs-queue-metrics")


async def retire_catch_all_consumer(js: JetStreamContext, s: JobsSettings) -> None:
    """Deletes the single all-priorities consumer runners used before priority lanes.

    Its filter (``ferry.jobs.items.>``) overlaps the lanes' ones, which a work-queue stream
    refuses. Its unacked items stay in the stream and go to the lanes.
    """
    if len(s.lanes()) == 1:
        return
    try:
        info = await js.consumer_info(messaging.WORK_STREAM, s.consumer_name)
    except NotFoundError:
        return
    if info.config.filter_subject == s.subject_filter:
        log.info("deleting consumer %s (one for all priorities): lanes replace it", s.consumer_name)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(messaging.WORK_STREAM, s.consumer_name)
