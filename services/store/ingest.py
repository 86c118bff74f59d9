"""Writes record events from JetStream into Postgres: batched, idempotent, acked after commit.

At-least-once delivery plus an upsert on the record id makes every record land exactly once: a new
id is inserted, and an existing row is replaced only by the re-run record of the retry round
RetryJob re-queued it for. Job counters move only for rows a transaction really wrote, so a
redelivery never counts an item twice. A failed write naks the batch: nothing is acked that is not stored.
Only an event that can never be stored (undecodable, or refused by Postgres for its content) is
terminated, and it is logged.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
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
from services.common.messaging import EVENTS_STREAM, PullConsumer
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
    """One event ready to write (a tuple: ingest makes one per record, a dataclass costs more)."""

    message: Msg
    row: codec.PredictionRow


async def write_batch(pool: asyncpg.Pool, rows: list[codec.PredictionRow]) -> int:
    """Writes rows and their jobs' progress in one transaction; returns how many were written."""
    try:
        async with pool.acquire() as connection, connection.transaction():
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


def decode(message: Msg) -> Decoded | None:
    """Parses one event; None when it can never be stored (it is then terminated)."""
    try:
        event = events_pb2.PredictionRecorded.FromString(message.data)
        if not event.tenant:
            raise ValueError("event has no tenant")
        return Decoded(message, codec.prediction_row(event.tenant, event.prediction, event.generation))
    except (DecodeError, ValueError) as err:
        log.error("dropping malformed record event on %s: %s", message.subject, err)
        return None


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

    async def run(self, consumer: PullConsumer) -> None:
        """Ingests until cancelled; a failed fetch or batch is logged and retried, never fatal."""
        try:
            while True:
                messages = await consumer.next_batch(self._batch, self._max_wait_s)
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
        """Writes one fetched batch, then acks it (or naks it when the write failed)."""
        decoded = []
        for message in messages:
            item = decode(message)
            if item is None:
                metrics.RECORDS.labels("malformed").inc()
                await message.term()
            else:
                decoded.append(item)
        if decoded and not await self._write(decoded):
            # One record Postgres refuses (a NUL character in a string, say) would hold back its
            # whole batch on every redelivery: write them one by one and drop only the refused.
            for item in decoded:
                if not await self._write([item]):
                    log.error("dropping record %s: Postgres refuses its content", item.row.id)
                    metrics.RECORDS.labels("refused").inc()
                    await item.message.term()

    async def _write(self, group: list[Decoded]) -> bool:
        """Writes ``group`` and acks it, or naks it when the failure may pass.

        Returns:
            Whether Postgres accepted the content; when it refused, nothing was acked or naked.
        """
        started = time.time_ns()
        try:
            written = await self._writer(self._pool, [d.row for d in group])
        except _REFUSED:
            return False
        except _TRANSIENT as err:
            if isinstance(err, UNREACHABLE):
                self._outage.failed(err)  # once per outage: every batch fails alike until it ends
            else:
                log.warning(
                    "cannot write %d records, redelivering in %.0fs: %r", len(group), self._retry_delay_s, err
                )
            metrics.RECORDS.labels("retried").inc(len(group))
            await asyncio.gather(*(d.message.nak(delay=self._retry_delay_s) for d in group))
            return True
        self._outage.succeeded()
        committed = time.time_ns()
        metrics.BATCH_SIZE.observe(len(group))
        metrics.RECORDS.labels("inserted").inc(written)
        metrics.RECORDS.labels("duplicate").inc(len(group) - written)
        now = datetime.now(UTC)
        for item in group:
            # Each record's span joins the trace of the request that produced it.
            span = tracer.start_span(
                "store.ingest", context=parent_context(item.message.headers), start_time=started
            )
            span.set_attribute("ferry.prediction_id", str(item.row.id))
            span.end(end_time=committed)
            metrics.LAG.observe(max(0.0, (now - item.row.create_time).total_seconds()))
        for item in group:  # an ack is a buffered publish: awaiting each in turn beats a task per ack
            await item.message.ack()
        return True
