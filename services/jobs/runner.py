"""The work loop: pull job items from JetStream, run them through inference, record, then ack.

Delivery is at-least-once: a work message is acked only after its record is stored in
FERRY_EVENTS, and the record's id (and Nats-Msg-Id) is derived from the job id, item index and
retry generation, so a redelivery lands on the same record. See docs/jobs.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from ferry.events.v1 import events_pb2
from ferry.types.v1 import types_pb2
from services.common import messaging
from services.common.errors import status_to_proto
from services.common.failpoints import failpoint
from services.common.readiness import Readiness
from services.common.tracing import extract_context
from services.jobs.cancellation import CancelledJobs
from services.jobs.claims import ClaimChecks, ClaimError, InputBudget
from services.jobs.heartbeat import Heartbeat
from services.jobs.lanes import Room
from services.jobs.metrics import BATCH_SIZE, ITEM_LATENCY, ITEM_SECONDS, ITEMS
from services.jobs.predictor import Outcome, Predictor
from services.jobs.records import publish_dead_letter, publish_record
from services.jobs.retry import Backoff, gave_up
from services.jobs.settings import JobsSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ferry.jobs")

#: Where a fault test may kill the runner: the record is stored, the work message not yet acked.
AFTER_RECORD_PUBLISH = "jobs.after_record_publish"


class MalformedItem(ValueError):
    """A work message whose input cannot be decoded, but whose job and index can (``item``, with
    no input): the item is failed with the reason, so its job still ends."""

    def __init__(self, why: str, item: events_pb2.JobItem, job_id: uuid.UUID) -> None:
        super().__init__(why)
        self.item = item
        self.job_id = job_id


def decode_item(data: bytes) -> tuple[events_pb2.JobItem, uuid.UUID]:
    """Parses a work message into its JobItem and job id.

    Raises:
        MalformedItem: the input cannot be decoded (nested too deep, for example) but the
            identifying fields can (``JobItemHeader``).
        ValueError: the payload is not a JobItem with a UUID job id and a non-negative index.
    """
    try:
        item = events_pb2.JobItem.FromString(data)
    except DecodeError as err:
        why = f"not a ferry.events.v1.JobItem: {err}"
        try:  # the header skips the input (an unknown field to it), whatever is wrong inside it
            header = events_pb2.JobItemHeader.FromString(data)
            item = events_pb2.JobItem(
                tenant=header.tenant,
                job_id=header.job_id,
                item_index=header.item_index,
                model=header.model,
                generation=header.generation,
                priority=header.priority,
                input_name=header.input_name,
            )
            job_id = _job_id(item)
        except (DecodeError, ValueError):
            raise ValueError(why) from None
        raise MalformedItem(why, item, job_id) from None
    return item, _job_id(item)


def _job_id(item: events_pb2.JobItem) -> uuid.UUID:
    try:
        job_id = uuid.UUID(item.job_id)
    except ValueError:
        raise ValueError(f"job_id {item.job_id!r} is not a UUID") from None
    if item.item_index < 0:
        raise ValueError(f"item_index {item.item_index} is negative")
    return job_id


#: How inference names an input: by its position in the call, which is not the item's in its job.
_CALL_POSITION = re.compile(r"^input \d+ ")


def own_index(outcome: Outcome, index: int) -> Outcome:
    """The outcome with an error naming the item by its index in the job ("item 12 is not a
    decodable image"), not by its position in the runner's call to inference ("input 0 …")."""
    if outcome.error is None or not _CALL_POSITION.match(outcome.error.message):
        return outcome
    error = status_pb2.Status()
    error.CopyFrom(outcome.error)
    error.message = _CALL_POSITION.sub(f"item {index} ", error.message, count=1)
    return Outcome(result=outcome.result, error=error)


def _describe(error: status_pb2.Status) -> str:
    return f"{error.message} (code {error.code})"


@dataclass
class WorkItem:
    """One delivered job item and the span it runs in, until it is acked, nak'ed or released."""

    msg: Msg
    item: events_pb2.JobItem
    job_id: uuid.UUID
    span: trace.Span
    parent_trace_id: int
    lane: str
    """The priority lane (consumer) it was taken from."""
    fetched: float = field(default_factory=time.perf_counter)
    settled: bool = False

    @property
    def attempt(self) -> int:
        """Which delivery of this message this is, from 1 (JetStream counts, so it survives restarts)."""
        return int(self.msg.metadata.num_delivered)

    @property
    def key(self) -> int:
        """The message's stream sequence: the same on every delivery, and unique per item."""
        return int(self.msg.metadata.sequence.stream)

    def close(self, outcome: str) -> None:
        """Marks the item settled, counts it and ends its span."""
        self.settled = True
        ITEMS.labels(outcome, self.item.model).inc()
        ITEM_SECONDS.labels(outcome).observe(time.perf_counter() - self.fetched)
        if outcome in ("succeeded", "failed"):
            queued = self.msg.metadata.timestamp.timestamp()
            ITEM_LATENCY.labels(self.lane).observe(max(0.0, time.time() - queued))
        self.span.set_attribute("ferry.outcome", outcome)
        self.span.end()


class Runner:
    """Runs job items from the durable consumer until cancelled; any number may share the consumer.

    Args:
        js: JetStream.
        predictor: calls inference.
        cancelled: tells which jobs were cancelled.
        settings: the runner's settings.
        readiness: the service's readiness; while it is not serving (inference or NATS down,
            or shutting down) the runner fetches nothing new.
        room: the in-flight budget this runner shares with the process's other priority lanes
            (see lanes.py); None gives it one of its own, of ``max_inflight``.
        priority: the lane's priority (its weight in ``room``); settings name its consumer.
    """

    def __init__(
        self,
        js: JetStreamContext,
        predictor: Predictor,
        cancelled: CancelledJobs,
        settings: JobsSettings,
        readiness: Readiness,
        room: Room | None = None,
        priority: str = messaging.DEFAULT_PRIORITY,
    ) -> None:
        self._js = js
        self._predictor = predictor
        self._cancelled = cancelled
        self._s = settings
        self._readiness = readiness
        self._backoff = Backoff(settings.backoff_base_s, settings.backoff_max_s, settings.retry_budget_s)
        self._heartbeat = Heartbeat(settings.ack_wait_s)
        self._claims = ClaimChecks(js, settings.publish_timeout_s)
        self._input_budget = InputBudget(settings.max_input_bytes)
        self._consumer: messaging.PullConsumer | None = None
        self._inflight = 0
        self._settled = 0
        room = room or Room(settings.max_inflight, settings.fetch_batch)
        self._lane = room.add_lane(
            priority,
            settings.priority_weights.get(priority, 1),
            inflight=lambda: self._inflight,
            admitted=lambda: self._inflight + self._settled,
        )

    def consumer_config(self) -> ConsumerConfig:
        """The durable consumer every runner process shares."""
        return ConsumerConfig(
            durable_name=self._s.consumer_name,
            description="Ferry jobs runner: job items -> inference -> prediction records",
            filter_subject=self._s.subject_filter,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._s.ack_wait_s,
            # Unlimited on the server: the runner decides when to give up (its retry budget) and
            # then writes a FAILED record. A server-side limit would silently strand the message
            # when that last record could not be published.
            max_deliver=-1,
        )

    async def subscribe(self) -> None:
        """Creates the durable consumer, or updates it, and starts a pull subscription on it.

        On an existing consumer the create is an update (nats-server 2.15 updates a durable whose
        config differs in updatable fields), so a changed ``ack_wait_s`` takes effect on start.
        The pulling (and its pause while not ready) is messaging's shared ``PullConsumer``.
        """
        if self._consumer is None:
            self._consumer = messaging.PullConsumer(
                self._js, messaging.WORK_STREAM, self.consumer_config(), "job items", self._readiness
            )
        await self._consumer.subscribe()

    async def run(self) -> None:
        """Pulls and runs batches until cancelled; in-flight items are handed back on the way out."""
        if self._consumer is None:
            await self.subscribe()
        consumer = self._consumer
        assert consumer is not None
        tasks: set[asyncio.Task[None]] = set()
        heartbeat = asyncio.create_task(self._heartbeat.run(), name="jobs-heartbeat")
        try:
            while True:
                # With inference or NATS down, an item fetched now could only fail and spend its
                # retry budget; left in the stream it waits for free. Items already fetched carry
                # on (their calls wait for inference within their deadline, then retry as usual).
                await consumer.until_ready()
                room = await self._room()
                msgs = await consumer.next_batch(room, self._s.fetch_timeout_s)
                if not msgs:
                    continue
                self._inflight += len(msgs)
                task = asyncio.create_task(self._process(msgs))
                tasks.add(task)
                task.add_done_callback(functools.partial(self._finished, count=len(msgs), tasks=tasks))
        finally:
            heartbeat.cancel()
            # Unsubscribe before the in-flight items are nak'ed: otherwise JetStream may redeliver
            # them into this runner's still-open pull request, where nobody would run them.
            await consumer.close()
            self._consumer = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(heartbeat, *tasks, return_exceptions=True)

    async def _room(self) -> int:
        """Waits for room under max_inflight (shared by the priority lanes, by weight); returns
        how many items may be fetched. Called before every fetch: it also ends the previous one's
        reservation (see lanes.py)."""
        return await self._lane.take()

    def _finished(self, task: asyncio.Task[None], count: int, tasks: set[asyncio.Task[None]]) -> None:
        tasks.discard(task)
        self._inflight -= count
        self._settled += count
        self._lane.freed()
        if not task.cancelled() and task.exception() is not None:
            log.error("a batch of job items failed unexpectedly", exc_info=task.exception())

    async def _process(self, msgs: list[Msg]) -> None:
        """Runs one fetched batch: decode, drop cancelled jobs, group, predict, record, ack."""
        BATCH_SIZE.observe(len(msgs))
        work: list[WorkItem] = []
        try:
            for msg in msgs:
                opened = await self._open(msg)
                if opened is not None:
                    work.append(opened)
            groups: dict[tuple[str, int, int, int], list[WorkItem]] = defaultdict(list)
            for w in work:
                if await self._cancelled.is_cancelled(w.job_id):
                    await self._settle_with(w, "skipped_cancelled", w.msg.ack)
                else:
                    # Items of one job share its trace, so grouping by trace keeps the Predict
                    # call inside that trace; inference batches concurrent requests anyway.
                    key = (w.item.model, w.item.top_k, w.item.priority, w.parent_trace_id)
                    groups[key].append(w)
            await asyncio.gather(*(self._run_group(group) for group in groups.values()))
        except BaseException as err:
            await self._abandon(work, hand_back=isinstance(err, asyncio.CancelledError))
            raise

    async def _abandon(self, work: list[WorkItem], hand_back: bool) -> None:
        """Lets go of the batch's unsettled items after it stopped early.

        Shutting down (``hand_back``), they are nak'ed so another runner takes them at once
        instead of after ack_wait. After a bug they are only no longer claimed: they come back
        after ack_wait rather than being kept alive by heartbeats forever.
        """
        for w in work:
            if w.settled:
                continue
            self._heartbeat.untrack(w.msg)
            if hand_back:
                with contextlib.suppress(Exception):
                    await w.msg.nak()
            w.span.end()

    async def _open(self, msg: Msg) -> WorkItem | None:
        """Decodes ``msg`` and starts its span; a message that is not a job item is terminated,
        one whose input cannot be read is failed (recorded, so its job ends) and acked."""
        try:
            item, job_id = decode_item(msg.data)
            if item.HasField("notebook_run"):
                # The notebook worker's kind of item, on its own subject; on a model lane only
                # through a FERRY_NOTEBOOK_SUBJECT that names a lane's: fail it so its job ends.
                raise MalformedItem(
                    f"is a run of notebook {item.notebook_run.notebook!r}, which a model lane does not"
                    f" run (it came on {msg.subject}; FERRY_NOTEBOOK_SUBJECT must be a subject of its own)",
                    item,
                    job_id,
                )
        except MalformedItem as err:
            log.warning(
                "job %s item %d cannot be run: its work message %s", err.job_id, err.item.item_index, err
            )
            error = status_to_proto(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"item {err.item.item_index} cannot be run: its work message {err}",
                "JOB_ITEM_MALFORMED",
            )
            work = self._start(msg, err.item, err.job_id)
            await self._settle(work, Outcome(error=error), dead_letter=False)
            return None
        except ValueError as err:
            log.warning("terminating malformed work message on %s: %s", msg.subject, err)
            ITEMS.labels("malformed", "").inc()
            with contextlib.suppress(NatsError):
                await msg.term()
            return None
        return self._start(msg, item, job_id)

    def _start(self, msg: Msg, item: events_pb2.JobItem, job_id: uuid.UUID) -> WorkItem:
        """The item's WorkItem: its span started, its message kept alive by the heartbeat."""
        parent = extract_context(msg.headers)
        span = tracer.start_span(
            "jobs.run_item",
            context=parent,
            attributes={
                "ferry.job_id": str(job_id),
                "ferry.item_index": item.item_index,
                "ferry.model": item.model,
                "ferry.attempt": int(msg.metadata.num_delivered),
                "ferry.generation": item.generation,
            },
        )
        parent_trace_id = trace.get_current_span(parent).get_span_context().trace_id
        self._heartbeat.track(msg)
        return WorkItem(msg, item, job_id, span, parent_trace_id, self._lane.name)

    async def _run_group(self, group: list[WorkItem]) -> None:
        """Runs a group in parts whose images fit the input budget, each part one Predict call."""
        parts = self._input_budget.parts(group, _referenced_bytes)
        await asyncio.gather(*(self._run_part(part, size) for part, size in parts))

    async def _run_part(self, group: list[WorkItem], referenced: int) -> None:
        async with self._input_budget.held(referenced):  # the images: held only while inference runs them
            read = await asyncio.gather(*(self._read_input(w) for w in group))
            runs = [w for w, found in zip(group, read, strict=True) if found is not None]
            inputs = [found for found in read if found is not None]
            del read
            if not runs:
                return
            first = runs[0]
            # The call is made in the first item's span; the group shares its trace (see _process).
            with trace.use_span(first.span, end_on_exit=False):
                outcomes = await self._predictor.predict(
                    first.item.model, first.item.top_k, inputs, first.item.priority
                )
            del inputs
        settles = [
            self._settle(w, own_index(o, w.item.item_index)) for w, o in zip(runs, outcomes, strict=True)
        ]
        await asyncio.gather(*settles)

    async def _read_input(self, w: WorkItem) -> types_pb2.Input | None:
        """The item's input, its claim check read now (the work message and its dead letter keep
        only the reference); None once an item whose input cannot be read is settled."""
        try:
            return await self._claims.input_of(w.item)
        except ClaimError as err:
            await self._settle(w, Outcome(error=err.status))
            return None

    async def _settle(self, w: WorkItem, outcome: Outcome, dead_letter: bool = True) -> None:
        """Records a final outcome and acks, or naks a transient failure with backoff."""
        with trace.use_span(w.span, end_on_exit=False):
            if outcome.error is not None and outcome.transient:
                delay = self._backoff.next_delay(w.attempt, w.key)
                if delay is not None:
                    await self._retry(w, _describe(outcome.error), delay)
                    return
                retried_s = self._backoff.waited(w.attempt - 1, w.key)
                outcome = Outcome(error=gave_up(outcome.error, w.attempt, retried_s))
            if outcome.error is not None:
                w.span.set_status(trace.StatusCode.ERROR, outcome.error.message)
            try:
                await self._leave_behind(w, outcome, dead_letter)
            except (NatsError, TimeoutError) as err:
                # Not stored, so not done. There is no giving up on this one (that would need
                # this very publish to work), so it is retried outside the budget, for as long
                # as it takes.
                delay = self._backoff.delay(w.attempt, w.key)
                await self._retry(w, f"publishing its record failed: {err!r}", delay)
                return
            # Only now is the result safe; a crash before this ack means a redelivery that
            # publishes the same record id again, which JetStream and store both drop.
            await self._settle_with(w, "failed" if outcome.error is not None else "succeeded", w.msg.ack)

    async def _leave_behind(self, w: WorkItem, outcome: Outcome, dead_letter: bool = True) -> None:
        """Publishes the item's record and, when it failed, its dead letter (the record first).

        The dead letter goes after the record, so RetryJob never finds an item to re-queue that
        its job does not yet count as failed, and before the ack, so a crash in between
        republishes both under the same ids.
        """
        timeout_s = self._s.publish_timeout_s
        await publish_record(self._js, w.item, w.job_id, outcome, timeout_s)
        failpoint(AFTER_RECORD_PUBLISH)
        if outcome.error is not None and dead_letter:
            await publish_dead_letter(self._js, w.item, w.job_id, outcome.error, timeout_s)

    async def _retry(self, w: WorkItem, why: str, delay: float) -> None:
        log.info(
            "job %s item %d attempt %d failed: %s; retrying in %.2fs (%.1fs of the %.0fs budget used)",
            w.job_id,
            w.item.item_index,
            w.attempt,
            why,
            delay,
            self._backoff.waited(w.attempt - 1, w.key),
            self._backoff.budget_s,
        )
        await self._settle_with(w, "retried", lambda: w.msg.nak(delay=delay))

    async def _settle_with(self, w: WorkItem, outcome: str, action: Callable[[], Awaitable[None]]) -> None:
        self._heartbeat.untrack(w.msg)
        try:
            await action()
        except NatsError as err:
            # The message comes back after ack_wait and lands on the same record id.
            log.warning("could not settle job %s item %d: %r", w.job_id, w.item.item_index, err)
        w.close(outcome)


def _referenced_bytes(w: WorkItem) -> int:
    """The size of the image ``w``'s claim check names (0 for an input carried in the message)."""
    return w.item.input_ref.size_bytes if w.item.HasField("input_ref") else 0
