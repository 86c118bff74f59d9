"""The work loop: pull job items from JetStream, run them through inference, record, then ack.

Delivery is at-least-once: a work message is acked only after its record is stored in
FERRY_EVENTS, and the record's id (and Nats-Msg-Id) is derived from the job id and item index,
so a redelivery lands on the same record. See docs/jobs.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from ferry.events.v1 import events_pb2
from services.common import messaging
from services.common.tracing import extract_context
from services.jobs.cancellation import CancelledJobs
from services.jobs.metrics import BATCH_SIZE, ITEM_SECONDS, ITEMS
from services.jobs.predictor import Outcome, Predictor
from services.jobs.records import prediction_record, record_id
from services.jobs.retry import backoff_delay, gave_up
from services.jobs.settings import JobsSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ferry.jobs")

# How long the loop waits before pulling again after NATS itself failed (not an empty stream).
_FETCH_ERROR_PAUSE_S = 1.0


def decode_item(data: bytes) -> tuple[events_pb2.JobItem, uuid.UUID]:
    """Parses a work message into its JobItem and job id.

    Raises:
        ValueError: the payload is not a JobItem with a UUID job id and a non-negative index.
    """
    try:
        item = events_pb2.JobItem.FromString(data)
    except DecodeError as err:
        raise ValueError(f"not a ferry.events.v1.JobItem: {err}") from None
    try:
        job_id = uuid.UUID(item.job_id)
    except ValueError:
        raise ValueError(f"job_id {item.job_id!r} is not a UUID") from None
    if item.item_index < 0:
        raise ValueError(f"item_index {item.item_index} is negative")
    return item, job_id


@dataclass
class WorkItem:
    """One delivered job item and the span it runs in, until it is acked, nak'ed or released."""

    msg: Msg
    item: events_pb2.JobItem
    job_id: uuid.UUID
    span: trace.Span
    parent_trace_id: int
    fetched: float = field(default_factory=time.perf_counter)
    settled: bool = False

    @property
    def attempt(self) -> int:
        """Which delivery of this message this is, from 1."""
        return int(self.msg.metadata.num_delivered)

    def close(self, outcome: str) -> None:
        """Marks the item settled, counts it and ends its span."""
        self.settled = True
        ITEMS.labels(outcome).inc()
        ITEM_SECONDS.labels(outcome).observe(time.perf_counter() - self.fetched)
        self.span.set_attribute("ferry.outcome", outcome)
        self.span.end()


class Runner:
    """Runs job items from the durable consumer until cancelled; any number may share the consumer."""

    def __init__(
        self,
        js: JetStreamContext,
        predictor: Predictor,
        cancelled: CancelledJobs,
        settings: JobsSettings,
    ) -> None:
        self._js = js
        self._predictor = predictor
        self._cancelled = cancelled
        self._s = settings
        self._sub: JetStreamContext.PullSubscription | None = None
        self._inflight = 0
        self._freed = asyncio.Event()

    def consumer_config(self) -> ConsumerConfig:
        """The durable consumer every runner process shares."""
        return ConsumerConfig(
            durable_name=self._s.consumer_name,
            description="Ferry jobs runner: job items -> inference -> prediction records",
            filter_subject=self._s.subject_filter,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._s.ack_wait_s,
            # Unlimited on the server: the runner counts attempts itself and, at max_deliver,
            # writes a FAILED record. A server-side limit would silently strand the message when
            # that last record could not be published.
            max_deliver=-1,
        )

    async def subscribe(self) -> None:
        """Creates (or updates) the durable consumer and binds a pull subscription to it."""
        await self._js.add_consumer(messaging.WORK_STREAM, self.consumer_config())
        self._sub = await self._js.pull_subscribe_bind(
            durable=self._s.consumer_name, stream=messaging.WORK_STREAM
        )

    async def run(self) -> None:
        """Pulls and runs batches until cancelled; in-flight items are handed back on the way out."""
        if self._sub is None:
            await self.subscribe()
        tasks: set[asyncio.Task[None]] = set()
        me = asyncio.current_task()
        try:
            while True:
                # nats-py's fetch can swallow a cancel that races its deadline (Python 3.11's
                # wait_for); without this check a stop request could be lost and shutdown hang.
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError
                room = await self._room()
                msgs = await self._fetch(room)
                if not msgs:
                    continue
                self._inflight += len(msgs)
                task = asyncio.create_task(self._process(msgs))
                tasks.add(task)
                task.add_done_callback(functools.partial(self._finished, count=len(msgs), tasks=tasks))
        finally:
            # Unsubscribe before the in-flight items are nak'ed: otherwise JetStream may redeliver
            # them into this runner's still-open pull request, where nobody would run them.
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
                self._sub = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _room(self) -> int:
        """Waits until fewer than max_inflight items run; returns how many more may be fetched."""
        while self._inflight >= self._s.max_inflight:
            self._freed.clear()
            await self._freed.wait()
        return min(self._s.fetch_batch, self._s.max_inflight - self._inflight)

    def _finished(self, task: asyncio.Task[None], count: int, tasks: set[asyncio.Task[None]]) -> None:
        tasks.discard(task)
        self._inflight -= count
        self._freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a batch of job items failed unexpectedly", exc_info=task.exception())

    async def _fetch(self, count: int) -> list[Msg]:
        assert self._sub is not None
        try:
            return await self._sub.fetch(count, timeout=self._s.fetch_timeout_s)
        except TimeoutError:  # nats' own TimeoutError is one too
            return []  # nothing to do right now
        except NatsError as err:
            log.warning("pulling job items failed, retrying: %r", err)
            await asyncio.sleep(_FETCH_ERROR_PAUSE_S)
            with contextlib.suppress(NatsError):
                await self.subscribe()  # in case the consumer was deleted under us
            return []

    async def _process(self, msgs: list[Msg]) -> None:
        """Runs one fetched batch: decode, drop cancelled jobs, group, predict, record, ack."""
        BATCH_SIZE.observe(len(msgs))
        work: list[WorkItem] = []
        try:
            for msg in msgs:
                opened = await self._open(msg)
                if opened is not None:
                    work.append(opened)
            groups: dict[tuple[str, int, int], list[WorkItem]] = defaultdict(list)
            for w in work:
                if await self._cancelled.is_cancelled(w.job_id):
                    await self._settle_with(w, "skipped_cancelled", w.msg.ack)
                else:
                    # Items of one job share its trace, so grouping by trace keeps the Predict
                    # call inside that trace; inference batches concurrent requests anyway.
                    groups[(w.item.model, w.item.top_k, w.parent_trace_id)].append(w)
            await asyncio.gather(*(self._run_group(group) for group in groups.values()))
        except asyncio.CancelledError:
            # Shutting down: hand unfinished items straight back instead of waiting out ack_wait.
            for w in work:
                if not w.settled:
                    with contextlib.suppress(Exception):
                        await w.msg.nak()
                    w.span.end()
            raise

    async def _open(self, msg: Msg) -> WorkItem | None:
        """Decodes ``msg`` and starts its span; a message that is not a job item is terminated."""
        try:
            item, job_id = decode_item(msg.data)
        except ValueError as err:
            log.warning("terminating malformed work message on %s: %s", msg.subject, err)
            ITEMS.labels("malformed").inc()
            with contextlib.suppress(NatsError):
                await msg.term()
            return None
        parent = extract_context(msg.headers)
        span = tracer.start_span(
            "jobs.run_item",
            context=parent,
            attributes={
                "ferry.job_id": str(job_id),
                "ferry.item_index": item.item_index,
                "ferry.model": item.model,
                "ferry.attempt": int(msg.metadata.num_delivered),
            },
        )
        parent_trace_id = trace.get_current_span(parent).get_span_context().trace_id
        return WorkItem(msg, item, job_id, span, parent_trace_id)

    async def _run_group(self, group: list[WorkItem]) -> None:
        first = group[0]
        # The call is made in the first item's span; the group shares its trace (see _process).
        with trace.use_span(first.span, end_on_exit=False):
            outcomes = await self._predictor.predict(
                first.item.model, first.item.top_k, [w.item.input for w in group]
            )
        await asyncio.gather(*(self._settle(w, o) for w, o in zip(group, outcomes, strict=True)))

    async def _settle(self, w: WorkItem, outcome: Outcome) -> None:
        """Records a final outcome and acks, or naks a transient failure with backoff."""
        with trace.use_span(w.span, end_on_exit=False):
            if outcome.error is not None and outcome.transient:
                if w.attempt < self._s.max_deliver:
                    await self._retry(w, f"{outcome.error.message} (code {outcome.error.code})")
                    return
                outcome = Outcome(error=gave_up(outcome.error, w.attempt))
            if outcome.error is not None:
                w.span.set_status(trace.StatusCode.ERROR, outcome.error.message)
            event = events_pb2.PredictionRecorded(
                tenant=w.item.tenant, prediction=prediction_record(w.item, w.job_id, outcome)
            )
            try:
                await messaging.publish(
                    self._js,
                    messaging.PREDICTIONS_SUBJECT,
                    event,
                    msg_id=record_id(w.job_id, w.item.item_index),
                    timeout_s=self._s.publish_timeout_s,
                )
            except (NatsError, TimeoutError) as err:
                await self._retry(w, f"publishing its record failed: {err!r}")
                return
            # Only now is the result safe; a crash before this ack means a redelivery that
            # publishes the same record id again, which JetStream and store both drop.
            await self._settle_with(w, "failed" if outcome.error is not None else "succeeded", w.msg.ack)

    async def _retry(self, w: WorkItem, why: str) -> None:
        delay = backoff_delay(w.attempt, self._s.backoff_base_s, self._s.backoff_max_s)
        log.info(
            "job %s item %d attempt %d/%d failed: %s; retrying in %.2fs",
            w.job_id,
            w.item.item_index,
            w.attempt,
            self._s.max_deliver,
            why,
            delay,
        )
        await self._settle_with(w, "retried", lambda: w.msg.nak(delay=delay))

    async def _settle_with(self, w: WorkItem, outcome: str, action: Callable[[], Awaitable[None]]) -> None:
        try:
            await action()
        except NatsError as err:
            # The message comes back after ack_wait and lands on the same record id.
            log.warning("could not settle job %s item %d: %r", w.job_id, w.item.item_index, err)
        w.close(outcome)
