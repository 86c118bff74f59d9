"""Recording predictions in batches: one JetStream publish and one acknowledgement per batch.

Each request still waits until its own record is stored (its batch acknowledged) before it is
answered; what the batch saves is the per-record work of the gateway, nats-server and store's
ingest (a publish, an acknowledgement round trip, and store's ack of each message): about a
third of the record path's CPU per request (docs/benchmarks.md, *Edge and records*).

Batches form by group commit, so no request waits on a timer: a record that finds no batch in
flight is published at once (after the current turn of the event loop, which gathers the records
that became ready together); records that arrive while a batch is in flight wait for it and go
out together when it is acknowledged. A batch that reaches its size limit goes out at once.

Idempotency: a batch has a message id of its own, kept across its publisher's retries, so
JetStream stores it once however often a lost acknowledgement makes it be sent again; each
record keeps its id (the prediction's), on which store's write deduplicates, so a record sent
again in another batch (a client's retry with the same ``request_id``) is stored once.
"""

from __future__ import annotations

import asyncio
import uuid

from prometheus_client import Histogram

from ferry.events.v1 import events_pb2
from services.common import messaging
from services.common.publisher import Publisher
from services.common.tracing import inject_headers

_TRACEPARENT = "traceparent"

BATCH_RECORDS = Histogram(
    "ferry_gateway_record_batch_records",
    "Prediction records per JetStream message (one publish and one acknowledgement).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class RecordBatcher:
    """Publishes prediction records in batches and tells each caller when its batch is stored.

    Args:
        publisher: publishes with retries inside its budget.
        max_records: the most records in one batch.
        max_bytes: the most bytes of records in one batch (below NATS's max payload).
        max_in_flight: how many batches may wait for their acknowledgement at once before new
            records wait to form the next batch (one: pure group commit).
    """

    def __init__(
        self, publisher: Publisher, max_records: int, max_bytes: int, max_in_flight: int = 1
    ) -> None:
        self._publisher = publisher
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._records: list[events_pb2.PredictionRecorded] = []
        self._bytes = 0
        self._stored: asyncio.Future[None] | None = None  # the forming batch's outcome
        self._in_flight = 0
        self._start_scheduled = False
        self._publishing: set[asyncio.Task[None]] = set()

    async def record(self, event: events_pb2.PredictionRecorded) -> None:
        """Adds ``event`` to the forming batch and returns once JetStream stored that batch.

        The caller's trace context travels in the record (``traceparent``), so store's write of
        it joins the caller's trace. A caller cancelled while waiting does not stop the batch.

        Raises:
            nats.errors.Error, TimeoutError: the batch was not acknowledged within the
                publisher's budget (as ``Publisher.publish``).
        """
        traceparent = inject_headers().get(_TRACEPARENT)
        if traceparent:
            event.traceparent = traceparent
        size = event.ByteSize()
        if self._records and (
            len(self._records) >= self._max_records or self._bytes + size > self._max_bytes
        ):
            self._start()
        if self._stored is None:
            self._stored = asyncio.get_running_loop().create_future()
            # Nobody may be left to read a failure (every caller cancelled): mark it read.
            self._stored.add_done_callback(_read_outcome)
        stored = self._stored
        self._records.append(event)
        self._bytes += size
        if self._in_flight < self._max_in_flight and not self._start_scheduled:
            # After this turn of the loop: the records of requests answered together join.
            self._start_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_if_free)
        await asyncio.shield(stored)

    async def close(self) -> None:
        """Waits for the batches in flight (and the one forming) to be acknowledged or to fail."""
        if self._records:
            self._start()
        while self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    def _start_if_free(self) -> None:
        self._start_scheduled = False
        if self._records and self._in_flight < self._max_in_flight:
            self._start()

    def _start(self) -> None:
        """Publishes the forming batch in a task of its own."""
        records, stored = self._records, self._stored
        self._records, self._bytes, self._stored = [], 0, None
        if stored is None:
            return
        self._in_flight += 1
        task = asyncio.create_task(self._publish(records, stored))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(
        self, records: list[events_pb2.PredictionRecorded], stored: asyncio.Future[None]
    ) -> None:
        BATCH_RECORDS.observe(len(records))
        try:
            batch = events_pb2.PredictionsRecorded(records=records)
            await self._publisher.publish(
                messaging.PREDICTION_BATCHES_SUBJECT, batch, f"batch:{uuid.uuid4()}"
            )
        except asyncio.CancelledError:  # the gateway is stopping: its waiters are cancelled too
            stored.cancel()
            raise
        except Exception as err:  # every waiter gets the failure
            stored.set_exception(err)
        else:
            stored.set_result(None)
        finally:
            self._in_flight -= 1
            if self._records and self._in_flight < self._max_in_flight:
                self._start()  # what gathered while this batch was in flight goes out now


def _read_outcome(stored: asyncio.Future[None]) -> None:
    if not stored.cancelled():
        stored.exception()
