"""Applies job events from JetStream to the jobs table: how each manifest expansion goes.

The jobs service expands a manifest away from the API (``services/jobs/expander.py``) and reports
on ``ferry.jobs.events.expansion``: lines read so far (the job's stall clock starts again), the
items_total once every item is queued (the job leaves EXPANDING), or the error that failed it.
Each applies only to a job still EXPANDING (or, for the total, one cancelled while it expanded),
so a redelivered or late event changes nothing; an
event is acked after its transaction commits, naked while Postgres is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from ferry.events.v1 import events_pb2
from services.common.messaging import EVENTS_STREAM, EXPANSION_EVENTS_SUBJECT, PullConsumer
from services.store.outage import UNREACHABLE
from services.store.repositories import jobs

log = logging.getLogger(__name__)

_BATCH = 64
# Postgres down, restarting or in a deadlock: the event comes back later.
_TRANSIENT: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *UNREACHABLE)
_RETRY_DELAY_S = 2.0


async def apply(pool: asyncpg.Pool, event: events_pb2.JobExpansionEvent) -> None:
    """Writes one expansion event to its job (nothing if the job is no longer EXPANDING)."""
    tenant, job_id = event.tenant, uuid.UUID(event.job_id)
    async with pool.acquire() as connection, connection.transaction():
        outcome = event.WhichOneof("outcome")
        if outcome == "items_total":
            row = await jobs.finish_expansion(connection, tenant, job_id, event.items_total)
            if row is not None:
                log.info("job %s expanded into %d items", job_id, event.items_total)
        elif outcome == "error":
            row = await jobs.fail_expansion(
                connection, tenant, job_id, event.error.code, _reason(event), event.error.message
            )
            if row is not None:
                log.info("job %s failed while expanding: %s", job_id, event.error.message)
        elif outcome == "lines_read":
            await jobs.touch_expansion(connection, tenant, job_id)


def _reason(event: events_pb2.JobExpansionEvent) -> str:
    """The ErrorInfo reason carried in the event's error."""
    for detail in event.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return "INVALID_MANIFEST"


class JobEvents:
    """Pulls job events from a durable consumer (store replicas share it) and applies them."""

    def __init__(self, js: JetStreamContext, pool: asyncpg.Pool, consumer: str) -> None:
        self._js = js
        self._pool = pool
        self._consumer = consumer

    async def subscribe(self) -> PullConsumer:
        """The pull subscription on the durable consumer (created or updated)."""
        config = ConsumerConfig(
            durable_name=self._consumer,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
            max_deliver=-1,  # a Postgres outage must delay a job's outcome, never drop it
            filter_subject=EXPANSION_EVENTS_SUBJECT,
        )
        consumer = PullConsumer(self._js, EVENTS_STREAM, config, "job events")
        await consumer.subscribe()
        return consumer

    async def run(self, consumer: PullConsumer) -> None:
        """Applies events until cancelled; a failed one is redelivered, never fatal."""
        try:
            while True:
                for message in await consumer.next_batch(_BATCH, 1.0):
                    await self.handle(message)
        finally:
            await consumer.close()

    async def handle(self, message: Msg) -> None:
        """Applies one event and acks it; naks it when Postgres fails, terminates it if garbage."""
        try:
            event = events_pb2.JobExpansionEvent.FromString(message.data)
            uuid.UUID(event.job_id)
            if not event.tenant:
                raise ValueError("event has no tenant")
        except (DecodeError, ValueError) as err:
            log.error("dropping malformed job event on %s: %s", message.subject, err)
            await message.term()
            return
        try:
            await apply(self._pool, event)
        except _TRANSIENT as err:
            log.warning("cannot apply job event of %s, redelivering: %r", event.job_id, err)
            await message.nak(delay=_RETRY_DELAY_S)
            await asyncio.sleep(_RETRY_DELAY_S)  # an outage fails every event alike: do not spin
            return
        await message.ack()
