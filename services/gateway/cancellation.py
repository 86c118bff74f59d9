"""The JetStream KV bucket where the gateway marks cancelled jobs for the runners to skip."""

from __future__ import annotations

import asyncio
import uuid

from nats.js.kv import KeyValue

CANCELLED = b"1"


async def mark_cancelled(bucket: KeyValue, job_id: uuid.UUID, timeout_s: float) -> None:
    """Records ``job_id`` as cancelled (key: the job's uuid, value b"1"), within ``timeout_s``."""
    await asyncio.wait_for(bucket.put(str(job_id), CANCELLED), timeout_s)
