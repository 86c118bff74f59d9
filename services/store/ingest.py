"""Writes record events from JetStream into Postgres: batched, idempotent, acked after commit.

At-least-once delivery plus an upsert on the record id makes every record land exactly once: a new
id is inserted, and an existing row is replaced only by the re-run record of the retry round
RetryJob re-queued it for. Job counters move only for rows a transaction really wrote, so a
redelivery never counts an item twice. A failed write naks the batch: nothing is acked that is not stored.
Only an event that can never be stored (undecodable, or refused by Postgres for its content) is
terminated, and it is logged. A message may be a batch of records (``PredictionsRecorded``, the
gateway's): each record is decoded, written and deduplicated on its own, and the message is acked
once all of them are stored (or can never be), naked if the write of any may still pass.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import NamedTuple

import asyncpg
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from ferry.events.v1 import events_pb2
from ferry.predictions.v1 import prediction_pb2
from services.common.messaging import EVENTS_STREAM, PREDICTION_BATCHES_SUBJECT, PullConsumer
from services.common.tasks import first_of
from services.common.tracing import extract_context
from services.store import codec, metrics
from services.store.outage import UNREACHABLE, OutageLog
from services.store.repositories import jobs, predictions

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ferry.store")

RECORDS_FILTER = "ferry.records.>"
MAX_ACK_PENDING = 20_000
_SUCCEEDED = prediction_pb2.PREDICTION_STATE_SUCCEEDED


# Postgres refuses these for a row's content (SQLSTATE classes 22 and 23): retrying cannot help.
_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# Everything else from the database (down, restarting, a deadlock) may pass: redeliver later.
_TRANSIENT: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *UNREACHABLE)


# Ingest allocates a handful of objects per record (message, row, lists), tens of thousands a
# second, so CPython's default collection thresholds (700 / 10 / 10) ran a young collection every
# few records and a full one, walking every object the process holds, every few seconds: about
# 10 % of the store process's CPU per row (docs/store.md, Throughput). Ingest makes almost no
# reference cycles; collecting less often, over fewer objects, loses nothing.
GC_THRESHOLDS = (50_000, 50, 50)


def tune_gc() -> None:
    """Sets ingest's collection thresholds and freezes what start-up made (never garbage).

    Call once start-up is done: frozen objects are left out of every later collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Decoded(NamedTuple):
    """One record ready to write (a tuple: ingest makes one per record, a dataclass costs more)."""

    message: Msg
    row: codec.PredictionRow
    headers: dict[str, str] | None
    """Where the record's trace context is: its message's headers, or its own in a batch."""


async def write_batch(pool: asyncpg.Pool, rows: list[codec.PredictionRow]) -> int:
    """Writes rows and their jobs' progress in one transaction; returns how many were written."""
    try:
        async with pool.acquire() as connection:
            if len(rows) <= predictions.SMALL_BATCH and all(row.job_id is None for row in rows):
                # One statement, its own transaction, and no job to count: one round trip.
                return len(await predictions.upsert_many(connection, rows))
            async with connection.transaction():
                written = await predictions.upsert_many(connection, rows)
                progress = job_progress(written)
                if progress:
                    await jobs.count_finished_items(connection, progress)
    except asyncpg.InternalClientError as err:
        # A connection lost in the middle of COPY stays in asyncpg's COPY state, so the commit or
        # rollback after it fails with this rather than a connection error: it is an outage.
        raise asyncpg.ConnectionDoesNotExistError(f"connection lost while writing: {err}") from err
    return len(written)


def job_progress(written: list[asyncpg.Record]) -> list[jobs.Progress]:
    """Tallies the job item rows a transaction wrote into per-job progress.

    Sorted by job, so replicas tend to lock shared jobs in one order; a deadlock Postgres still
    finds aborts the transaction, which is transient: the batch is naked and comes back.
    """
    tally: dict[tuple[str, uuid.UUID], jobs.Progress] = {}
    for row in written:
        if row["job_id"] is None:
            continue
        key = (row["tenant"], row["job_id"])
        so_far = tally.get(key) or jobs.Progress(*key, succeeded=0, failed=0)
        if row["state"] == _SUCCEEDED:
            tally[key] = replace(so_far, succeeded=so_far.succeeded + 1)
        else:  # the job's error reports the last failed item it heard of
            tally[key] = replace(
                so_far,
                failed=so_far.failed + 1,
                error_code=row["error_code"],
                error_reason=row["error_reason"],
                error_message=row["error_message"],
            )
    return [tally[key] for key in sorted(tally)]


def decode(message: Msg) -> list[Decoded]:
    """The records of one event message: a ``PredictionRecorded``, or a ``PredictionsRecorded``
    batch on ``PREDICTION_BATCHES_SUBJECT``.

    A record that can never be stored (no tenant, a bad name, a time out of range) is logged,
    counted as malformed and left out, so one bad record does not hold back the rest of its
    batch; [] when nothing in the message can be stored (it is then terminated).
    """
    events: Sequence[events_pb2.PredictionRecorded]
    try:
        if message.subject == PREDICTION_BATCHES_SUBJECT:
            events = events_pb2.PredictionsRecorded.FromString(message.data).records
        else:
            events = [events_pb2.PredictionRecorded.FromString(message.data)]
    except DecodeError as err:
        log.error("dropping malformed record event on %s: %s", message.subject, err)
        metrics.RECORDS.labels("malformed").inc()
        return []
    decoded = []
    for event in events:
        try:
            if not event.tenant:
                raise ValueError("event has no tenant")
            row = codec.prediction_row(event.tenant, event.prediction, event.generation)
        except ValueError as err:
            log.error("dropping malformed record %r on %s: %s", event.prediction.name, message.subject, err)
            metrics.RECORDS.labels("malformed").inc()
            continue
        # A batch's record carries its request's trace context; a lone one's message does.
        headers = {"traceparent": event.traceparent} if event.traceparent else message.headers
        decoded.append(Decoded(message, row, headers))
    return decoded


_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_PLAIN_HEADERS = frozenset({"Nats-Msg-Id", "traceparent"})


def parent_context(headers: dict[str, str] | None) -> Context:
    """The trace context in a record's headers: ``extract_context(headers)``, cheaper.

    Every record's span needs it, and OpenTelemetry's propagators (W3C trace context, then baggage)
    cost about 5 µs a record; headers as store's publishers send them (a message id and a version
    00 ``traceparent``) are read here directly, anything else goes through the propagators.
    """
    if headers is None or not headers.keys() <= _PLAIN_HEADERS:
        return extract_context(headers)
    match = _TRACEPARENT.fullmatch(headers.get("traceparent", ""))
    if match is None:
        return extract_context(headers)
    trace_id, span_id, flags = (int(part, 16) for part in match.groups())
    if not (trace_id and span_id):
        return extract_context(headers)  # all zeros: invalid, the propagator says so
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return trace.set_span_in_context(NonRecordingSpan(parent))


#: Writes a batch of rows and returns how many were new: write_batch, or the benchmark's baseline.
Writer = Callable[[asyncpg.Pool, list[codec.PredictionRow]], Awaitable[int]]


class Ingestor:
    """Pulls record events from the durable consumer and writes them in batches."""

    def __init__(self, js: JetStreamContext, pool: asyncpg.Pool, consumer: str, batch: int,
                 max_wait_s: float, retry_delay_s: float, writer: Writer | None = None) -> None:  # fmt: skip
        self._writer = writer or write_batch
        self._js = js
        self._pool = pool
        self._consumer = consumer
        self._batch = batch
        self._max_wait_s = max_wait_s
        self._retry_delay_s = retry_delay_s
        self._outage = OutageLog(log, "redelivering record batches", "record batches redelivered")
        self._backlog = asyncio.Event()  # set while fetches come back full: more loops help

    async def subscribe(self) -> PullConsumer:
        """A pull subscription on the durable consumer (created or updated); replicas share it."""
        config = ConsumerConfig(
            durable_name=self._consumer,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
            max_deliver=-1,  # a Postgres outage must delay records, never drop them
            filter_subject=RECORDS_FILTER,
            # JetStream's default (1,000 unacked) would cut big batches in flight down to a few
            # dozen records per fetch; leave room for every replica's batches in flight.
            max_ack_pending=max(MAX_ACK_PENDING, 4 * self._batch),
        )
        # Create or update: a consumer made by an older store gets the new limits too.
        consumer = PullConsumer(self._js, EVENTS_STREAM, config, "record events")
        await consumer.subscribe()
        return consumer

    async def run(self, consumer: PullConsumer, on_backlog_only: bool = False) -> None:
        """Ingests until cancelled; a failed fetch or batch is logged and retried, never fatal.

        Args:
            consumer: this loop's pull subscription.
            on_backlog_only: pull only while the stream has a backlog (the last fetch of any loop
                came back full). store's second and later loops run so: they overlap decoding
                with writing when records pour in, and while records trickle they do not pull at
                all, since every loop's pull cycle (a no-wait ask and a waiting pull, ten times a
                second) costs store and nats-server CPU whether or not records come
                (docs/benchmarks.md, *The record path in batches*).
        """
        try:
            while True:
                if on_backlog_only:
                    # Also for what this loop's last pull brought after its fetch returned:
                    # waiting on the backlog alone left those until their ack wait (60 s) ran
                    # out and JetStream sent them again (benchmarks.store: 2,000 of 10,000 rows
                    # committed a minute late).
                    await first_of(self._backlog.wait(), consumer.wait_buffered())
                messages = await consumer.next_batch(self._batch, self._max_wait_s, fill=True)
                if len(messages) >= self._batch:
                    self._backlog.set()
                else:
                    self._backlog.clear()
                if not messages:
                    continue
                try:
                    await self.handle(messages)
                except Exception:
                    # Unacked messages come back after ack_wait; ingest itself must live on.
                    log.exception("handling %d record events failed; they will be redelivered", len(messages))
                    metrics.RECORDS.labels("retried").inc(len(messages))
                    await asyncio.sleep(1.0)
        finally:
            # An open pull subscription would hold the connection's drain for its full timeout.
            await consumer.close()

    async def handle(self, messages: list[Msg]) -> None:
        """Writes one fetched batch, then settles each message: acked once every record it holds
        is stored (or can never be), naked when a write of one of them failed and may pass."""
        decoded: list[Decoded] = []
        for message in messages:
            items = decode(message)
            if items:
                decoded.extend(items)
            else:
                await message.term()
        if not decoded:
            return
        outcome = await self._write(decoded)
        if outcome is not _Outcome.REFUSED:
            await self._settle(decoded, retry=outcome is _Outcome.RETRY)
            return
        # One record Postgres refuses (a NUL character in a string, say) would hold back its
        # whole batch on every redelivery: write them one by one and drop only the refused.
        retry: set[int] = set()
        refused: set[int] = set()
        for item in decoded:
            single = await self._write([item])
            if single is _Outcome.REFUSED:
                log.error("dropping record %s: Postgres refuses its content", item.row.id)
                metrics.RECORDS.labels("refused").inc()
                refused.add(id(item))
            elif single is _Outcome.RETRY:
                retry.add(id(item.message))
        for message, items in _by_message(decoded):
            if id(message) in retry:
                await message.nak(delay=self._retry_delay_s)
            elif all(id(item) in refused for item in items):
                await message.term()
            else:
                await message.ack()

    async def _settle(self, group: list[Decoded], retry: bool) -> None:
        """Acks (or naks, to have them redelivered) the messages of ``group``, each once."""
        messages = [message for message, _ in _by_message(group)]
        if retry:
            await asyncio.gather(*(m.nak(delay=self._retry_delay_s) for m in messages))
            return
        for message in messages:  # an ack is a buffered publish: awaiting each in turn beats a task per ack
            await message.ack()

    async def _write(self, group: list[Decoded]) -> _Outcome:
        """Writes ``group`` in one transaction; acks and naks are left to the caller."""
        started = time.time_ns()
        try:
            written = await self._writer(self._pool, [d.row for d in group])
        except _REFUSED:
            return _Outcome.REFUSED
        except _TRANSIENT as err:
            if isinstance(err, UNREACHABLE):
                self._outage.failed(err)  # once per outage: every batch fails alike until it ends
            else:
                log.warning(
                    "cannot write %d records, redelivering in %.0fs: %r", len(group), self._retry_delay_s, err
                )
            metrics.RECORDS.labels("retried").inc(len(group))
            return _Outcome.RETRY
        self._outage.succeeded()
        committed = time.time_ns()
        metrics.BATCH_SIZE.observe(len(group))
        metrics.RECORDS.labels("inserted").inc(written)
        metrics.RECORDS.labels("duplicate").inc(len(group) - written)
        now = datetime.now(UTC)
        for item in group:
            # Each record's span joins the trace of the request that produced it.
            span = tracer.start_span("store.ingest", context=parent_context(item.headers), start_time=started)
            span.set_attribute("ferry.prediction_id", str(item.row.id))
            span.end(end_time=committed)
            metrics.LAG.observe(max(0.0, (now - item.row.create_time).total_seconds()))
        return _Outcome.STORED


class _Outcome(enum.Enum):
    STORED = "stored"
    REFUSED = "refused"  # Postgres refuses the content: retrying cannot help
    RETRY = "retry"  # the write may succeed later: redeliver


def _by_message(group: list[Decoded]) -> list[tuple[Msg, list[Decoded]]]:
    """The group's records by the message that brought them, in order (a batch brings many)."""
    messages: dict[int, tuple[Msg, list[Decoded]]] = {}  # by id(): a Msg is a dataclass, unhashable
    for item in group:
        messages.setdefault(id(item.message), (item.message, []))[1].append(item)
    return list(messages.values())
