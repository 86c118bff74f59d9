"""NATS JetStream: connection, the streams Ferry uses, and traced, deduplicated publishing.

Streams (created idempotently by whichever service starts first):

* ``FERRY_WORK`` (work-queue retention): job items on ``ferry.jobs.items.<priority>``.
* ``FERRY_EVENTS`` (kept 7 days): prediction records on ``ferry.records.predictions``
  and job events on ``ferry.jobs.events.<kind>``; store ingests them into Postgres.
* ``FERRY_DEAD`` (kept 7 days, the newest per subject): job items that ended FAILED, on
  ``ferry.jobs.dead.<job_id>.<item_index>``, with their input, so RetryJob can run them again.

Every publish carries a ``Nats-Msg-Id`` so a retried publish is dropped by JetStream, and the
W3C ``traceparent`` so consumers continue the publisher's trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack

import nats
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue

from services.common.tracing import inject_headers

log = logging.getLogger(__name__)

WORK_STREAM = "FERRY_WORK"
EVENTS_STREAM = "FERRY_EVENTS"
DEAD_STREAM = "FERRY_DEAD"
DEAD_LETTER_SUBJECT_PREFIX = "ferry.jobs.dead"
PREDICTIONS_SUBJECT = "ferry.records.predictions"
JOB_EVENTS_SUBJECT_PREFIX = "ferry.jobs.events"
JOB_ITEMS_SUBJECT_PREFIX = "ferry.jobs.items"
CANCELLED_JOBS_BUCKET = "ferry_cancelled_jobs"
DEFAULT_PRIORITY = "normal"

_DAY_S = 24 * 3600.0
DEAD_LETTER_DAYS = 7

STREAMS = (
    StreamConfig(
        name=WORK_STREAM,
        subjects=[f"{JOB_ITEMS_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=600.0,
    ),
    StreamConfig(
        name=EVENTS_STREAM,
        subjects=["ferry.records.>", f"{JOB_EVENTS_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * _DAY_S,
        duplicate_window=600.0,
    ),
    StreamConfig(
        name=DEAD_STREAM,
        subjects=[f"{DEAD_LETTER_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=DEAD_LETTER_DAYS * _DAY_S,
        max_msgs_per_subject=1,
        duplicate_window=600.0,
    ),
)


def job_items_subject(priority: str = DEFAULT_PRIORITY) -> str:
    """The subject job items of ``priority`` are published on."""
    return f"{JOB_ITEMS_SUBJECT_PREFIX}.{priority}"


def dead_letter_subject(job_id: str, item_index: int) -> str:
    """The subject a failed item of ``job_id`` is kept on, with its input, for RetryJob."""
    return f"{DEAD_LETTER_SUBJECT_PREFIX}.{job_id}.{item_index}"


def with_generation(msg_id: str, generation: int) -> str:
    """The ``Nats-Msg-Id`` of a message of retry round ``generation``: unchanged for the first run.

    A re-run item and its new record must not be dropped as duplicates of the first run's.
    """
    return msg_id if generation == 0 else f"{msg_id}:g{generation}"


async def connect(url: str, client_name: str, stack: AsyncExitStack) -> tuple[NatsClient, JetStreamContext]:
    """Connects to NATS (reconnecting forever) and drains the connection when ``stack`` closes.

    While the connection is down, publishes raise ``OutboundBufferLimitError`` at once.
    """

    async def on_error(err: Exception) -> None:
        log.warning("nats: %s", err)

    nc = await nats.connect(
        url,
        name=client_name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        # No buffering while disconnected: a publish either reaches a connected server or fails
        # at once. A buffered one could be flushed after its caller gave up and answered "not
        # recorded", which would make the answer and the record disagree.
        pending_size=0,
    )
    stack.push_async_callback(nc.drain)
    return nc, nc.jetstream()


async def ensure_streams(js: JetStreamContext) -> None:
    """Creates Ferry's streams, or updates them when their config changed."""
    for config in STREAMS:
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)


async def publish(
    js: JetStreamContext,
    subject: str,
    message: Message,
    msg_id: str,
    timeout_s: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> PubAck:
    """Publishes ``message`` and waits until JetStream has stored it.

    Args:
        js: the JetStream context.
        subject: where to publish.
        message: the protobuf payload.
        msg_id: deduplication id; a second publish with the same id inside the stream's
            duplicate window is acknowledged but not stored again.
        timeout_s: how long to wait for the stream's acknowledgement.
        headers: more headers to send (``Nats-Msg-Id`` and ``traceparent`` are set here).
    """
    sent = inject_headers({**(headers or {}), "Nats-Msg-Id": msg_id})
    return await js.publish(subject, message.SerializeToString(), timeout=timeout_s, headers=sent)


async def open_cancelled_bucket(js: JetStreamContext) -> KeyValue:
    """Opens the cancelled-jobs KV bucket, creating it when this service is the first to need it."""
    try:
        return await js.key_value(CANCELLED_JOBS_BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=CANCELLED_JOBS_BUCKET)
    except BadRequestError:
        # Another service created it in the meantime: use theirs.
        return await js.key_value(CANCELLED_JOBS_BUCKET)
