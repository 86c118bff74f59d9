"""Which jobs were cancelled: the job queue marks them in a JetStream KV bucket, runners ask it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.common.messaging import CANCELLED_JOBS_BUCKET

log = logging.getLogger(__name__)

# Bounds the memory of cached answers; expired ones are dropped when it is reached.
_MAX_CACHED = 10_000


class CancelledJobs:
    """Answers "was this job cancelled?" from the bucket, with a short cache.

    A cancellation is final, so a "yes" is remembered for the process's life; a "no" is reused
    for ``ttl_s`` only, so a cancel takes effect within that time. When the bucket cannot be read
    the answer is "no": running an item of a cancelled job costs work, never correctness, and
    store keeps a cancelled job cancelled whatever records arrive.
    """

    def __init__(self, bucket: KeyValue, ttl_s: float) -> None:
        self._bucket = bucket
        self._ttl_s = ttl_s
        self._cancelled: set[uuid.UUID] = set()
        self._live_until: dict[uuid.UUID, float] = {}

    async def is_cancelled(self, job_id: uuid.UUID) -> bool:
        """Whether ``job_id`` is marked cancelled."""
        if job_id in self._cancelled:
            return True
        now = time.monotonic()
        if self._live_until.get(job_id, 0.0) > now:
            return False
        try:
            await self._bucket.get(str(job_id))
        except KeyNotFoundError:  # also covers a deleted or purged key
            self._remember_live(job_id, now)
            return False
        except NatsError as err:
            log.warning(
                "cannot read %s for job %s, running its items: %r", CANCELLED_JOBS_BUCKET, job_id, err
            )
            return False
        if len(self._cancelled) >= _MAX_CACHED:
            self._cancelled.clear()
        self._cancelled.add(job_id)
        self._live_until.pop(job_id, None)
        return True

    def _remember_live(self, job_id: uuid.UUID, now: float) -> None:
        if len(self._live_until) >= _MAX_CACHED:
            self._live_until = {k: t for k, t in self._live_until.items() if t > now}
            if len(self._live_until) >= _MAX_CACHED:
                self._live_until.clear()
        self._live_until[job_id] = now + self._ttl_s


#: The value a cancelled job's key holds.
CANCELLED = b"1"


async def mark_cancelled(bucket: KeyValue, job_id: uuid.UUID, timeout_s: float) -> None:
    """Records ``job_id`` as cancelled (key: the job's uuid, value b"1"), within ``timeout_s``."""
    await asyncio.wait_for(bucket.put(str(job_id), CANCELLED), timeout_s)
