"""The JetStream KV bucket where the gateway marks cancelled jobs for the runners to skip."""

from __future__ import annotations

import asyncio
import uuid

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue

from services.common.messaging import CANCELLED_JOBS_BUCKET

CANCELLED = b"1"


async def open_cancelled_bucket(js: JetStreamContext) -> KeyValue:
    """Opens the cancelled-jobs bucket, creating it when the gateway is the first to need it."""
    try:
        return await js.key_value(CANCELLED_JOBS_BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=CANCELLED_JOBS_BUCKET)
    except BadRequestError:
        # The jobs runner created it in the meantime: use theirs.
        return await js.key_value(CANCELLED_JOBS_BUCKET)


async def mark_cancelled(bucket: KeyValue, job_id: uuid.UUID, timeout_s: float) -> None:
    """Records ``job_id`` as cancelled (key: the job's uuid, value b"1"), within ``timeout_s``."""
    await asyncio.wait_for(bucket.put(str(job_id), CANCELLED), timeout_s)
