"""The expander: reads the manifests of jobs created EXPANDING into job items, off the API's path.

CreateJob by manifest records the job EXPANDING and publishes one ``JobExpansion`` on
``ferry.jobs.expand`` (stream FERRY_EXPANSIONS, a work queue); it answers at once. Here a durable
consumer shared by every jobs process takes those requests and, for each:

1. reads the upload's index (a zip makes one item per file: nothing else to read), or copies a
   JSONL manifest to a spool file and checks every line (``manifests.Manifest.check``): a line
   that is not a valid item fails the job (``JobExpansionEvent.error``, naming the line) before
   any of its items is queued;
2. publishes the items in chunks to the work stream with the msg ids CreateJob always used,
   ``{job_id}:{index}``: a redelivered expansion (this process died mid-way) publishes them
   again and JetStream keeps one of each;
3. tells store the job's items_total (``JobExpansionEvent.items_total``): the job is QUEUED, or
   further along if items finished meanwhile.

While it works it reports to JetStream every third of ``expansion_ack_wait_s`` (so a long
manifest is not handed to a second expander) and to store every ``expansion_progress_s`` how
many lines it has read (so store's stall sweeper fails only an expansion that stopped).

Fair between tenants: at most ``max_expansions`` run at once in a process, at most
``expansions_per_tenant`` of them for one tenant; a request of a tenant already at its share is
handed back for a moment (nak with a delay) so another tenant's small manifest goes first. Each
expansion yields to the others after every chunk of lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from ferry.events.v1 import events_pb2
from services.common import messaging
from services.common.errors import FerryError
from services.common.failpoints import failpoint
from services.common.fetcher import fetcher_for
from services.common.publisher import Publisher
from services.common.readiness import Readiness
from services.common.upload_store import UploadStore
from services.jobs import manifests
from services.jobs.cancellation import CancelledJobs
from services.jobs.heartbeat import Heartbeat
from services.jobs.settings import JobsSettings
from services.jobs.submission import publish_job_items

log = logging.getLogger(__name__)

# A request of a tenant at its share of expanders comes back after this (another tenant's first).
_BUSY_TENANT_DELAY_S = 1.0
# A NATS failure mid-expansion (not the manifest's fault): the request comes back after this.
_RETRY_DELAY_S = 5.0


class Cancelled(Exception):
    """The job was cancelled while it expanded: stop, queue nothing more.

    Attributes:
        published: items queued before the cancel was seen (they may still run and be counted).
    """

    def __init__(self, published: int) -> None:
        super().__init__(published)
        self.published = published


class Expander:
    """Takes expansion requests from their durable consumer and expands them, several at once."""

    def __init__(
        self,
        js: JetStreamContext,
        cancelled: CancelledJobs,
        uploads: UploadStore,
        settings: JobsSettings,
        readiness: Readiness | None = None,
    ) -> None:
        self._js = js
        self._cancelled = cancelled
        self._uploads = uploads
        self._s = settings
        self._publisher = Publisher(js, settings.submit_publish_timeout_s)
        self._heartbeat = Heartbeat(settings.expansion_ack_wait_s)
        self._running: Counter[str] = Counter()  # expansions under way, by tenant
        config = ConsumerConfig(
            durable_name=settings.expander_consumer,
            description="Ferry jobs service: manifests of EXPANDING jobs -> job items",
            filter_subject=messaging.EXPANSIONS_SUBJECT,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.expansion_ack_wait_s,
            max_deliver=-1,  # a NATS outage delays an expansion; a bad manifest fails its job
        )
        self._consumer = messaging.PullConsumer(
            js, messaging.EXPANSIONS_STREAM, config, "expansion requests", readiness
        )

    async def subscribe(self) -> None:
        """Creates (or updates) the durable consumer and subscribes to it."""
        await self._consumer.subscribe()

    async def run(self) -> None:
        """Takes requests while there is room until cancelled; expansions cut short are handed back."""
        await self._consumer.take_each(
            self._take, self._s.fetch_timeout_s, self._s.max_expansions, self._heartbeat.run
        )

    async def _take(self, msg: Msg) -> None:
        try:
            request = events_pb2.JobExpansion.FromString(msg.data)
            uuid.UUID(request.job_id)
            if not request.tenant:
                raise ValueError("no tenant")
        except (DecodeError, ValueError) as err:
            log.warning("terminating malformed expansion request: %s", err)
            with contextlib.suppress(NatsError):
                await msg.term()
            return
        if self._running[request.tenant] >= self._s.expansions_per_tenant:
            with contextlib.suppress(NatsError):
                await msg.nak(delay=_BUSY_TENANT_DELAY_S)
            return
        self._running[request.tenant] += 1
        try:
            await self._expand_and_settle(msg, request)
        finally:
            self._running[request.tenant] -= 1
            if not self._running[request.tenant]:
                del self._running[request.tenant]

    async def _expand_and_settle(self, msg: Msg, request: events_pb2.JobExpansion) -> None:
        """Expands one request and acks it once store has been told the outcome."""
        # Cut short (shutting down) or broken: handed back, another expander starts it again.
        async with self._heartbeat.claimed(msg):
            try:
                event = events_pb2.JobExpansionEvent(tenant=request.tenant, job_id=request.job_id)
                try:
                    event.items_total = await self.expand(request)
                    log.info(
                        "job %s: %d items queued from %s", request.job_id, event.items_total, request.manifest
                    )
                except Cancelled as cancelled:
                    # The items already queued may run before their runner sees the cancel: store
                    # keeps the job CANCELLED and takes this total, so its counts read "n of total".
                    log.info("job %s was cancelled while it expanded; stopped", request.job_id)
                    event.items_total = cancelled.published
                except FerryError as err:
                    log.info("job %s: manifest refused: %s", request.job_id, err.message)
                    event.error.CopyFrom(err.to_status())
                except (NatsError, TimeoutError):
                    raise  # NATS is away: expanding again later resumes (below)
                except Exception:
                    # A fault of ours on this manifest. Handed back, it would fail again at once, for
                    # ever, with the job left EXPANDING: the job fails instead, and ends.
                    log.exception("job %s: expanding %s failed", request.job_id, request.manifest)
                    event.error.CopyFrom(_expansion_fault(request).to_status())
                await self._report(event, "done")
            except (NatsError, TimeoutError) as err:
                log.warning(
                    "job %s: expansion interrupted (%r); it starts again in %.0fs",
                    request.job_id,
                    err,
                    _RETRY_DELAY_S,
                )
                self._heartbeat.untrack(msg)
                with contextlib.suppress(NatsError):
                    await msg.nak(delay=_RETRY_DELAY_S)
                return
        await msg.ack()

    async def expand(self, request: events_pb2.JobExpansion) -> int:
        """Checks the manifest of ``request`` and queues its items; returns how many.

        Raises:
            FerryError: the manifest cannot make this job (a bad line, the upload gone, too
                many items, no input the model takes): the job fails with it.
            Cancelled: the job was cancelled meanwhile.
            nats.errors.Error, TimeoutError: NATS failed; expanding again later resumes.
        """
        fetcher = fetcher_for(self._s, int(request.max_image_bytes))
        reported = time.monotonic()

        published = 0

        async def progress(done: int) -> None:
            nonlocal reported
            if await self._cancelled.is_cancelled(uuid.UUID(request.job_id)):
                raise Cancelled(published)
            if time.monotonic() - reported >= self._s.expansion_progress_s:
                reported = time.monotonic()
                alive = events_pb2.JobExpansionEvent(
                    tenant=request.tenant, job_id=request.job_id, lines_read=done
                )
                await self._report(alive, f"read:{done}")
            await asyncio.sleep(0)  # another expansion's turn

        template = events_pb2.JobItem(
            tenant=request.tenant,
            job_id=request.job_id,
            model=request.model,
            top_k=request.top_k,
            priority=request.priority,
        )
        chunk = self._s.expansion_chunk
        async for inputs, names in manifests.chunks(self._uploads, request, fetcher, chunk, progress):
            # The job queue's publishing, msg ids "{job_id}:{index}": a redelivered expansion
            # publishes the same items again and JetStream keeps one of each.
            await publish_job_items(
                self._publisher, template, inputs, self._s.max_publish_inflight, published, names
            )
            published += len(inputs)
            failpoint("jobs.expansion_after_chunk")  # a crash mid-expansion (tests/faults)
            await progress(published)
        return published

    async def _report(self, event: events_pb2.JobExpansionEvent, what: str) -> None:
        await messaging.publish(
            self._js,
            messaging.EXPANSION_EVENTS_SUBJECT,
            event,
            f"{event.job_id}:expansion:{what}",
            self._s.publish_timeout_s,
        )


def _expansion_fault(request: events_pb2.JobExpansion) -> FerryError:
    """The error a job fails with when expanding its manifest hit a fault of Ferry's, not the manifest's."""
    return FerryError(
        f"Ferry failed while reading the manifest {request.manifest} (a fault of ours, logged with "
        f"job {request.job_id}); the job was not run. Submitting the manifest again may work; if it "
        "fails the same way, report the job id",
        reason="BACKEND_ERROR",
        metadata={"backend": "jobs"},
    )
