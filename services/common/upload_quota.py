"""Each tenant's stored upload bytes, bounded by a quota (UPLOAD_QUOTA_EXCEEDED, 429).

The Object Store cannot sum one tenant's objects without listing every object of the bucket, so
the gateway keeps a ledger per tenant in the JetStream KV bucket ``ferry_upload_usage``: the
uploads it stored, their sizes and when they expire (the bucket keeps uploads ``KEEP_DAYS``).
Every gateway replica reads and writes the same ledger with compare-and-set on its revision, so
the quota holds across replicas; an entry past its expiry no longer counts.
"""

from __future__ import annotations

import base64
import json
import time

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from services.common import limits
from services.common.errors import ResourceExhausted

BUCKET = "ferry_upload_usage"
#: Compare-and-set rounds before giving up on a ledger many uploads of one tenant write at once.
_ROUNDS = 20


def _key(tenant: str) -> str:
    # KV keys take [-/_=.a-zA-Z0-9]; a tenant id may hold other characters.
    return base64.urlsafe_b64encode(tenant.encode()).decode()


class UploadQuota:
    """Charges and refunds tenants' stored upload bytes against ``quota_bytes``."""

    def __init__(self, js: JetStreamContext, quota_bytes: int, keep_s: float, replicas: int = 1) -> None:
        self._js = js
        self._quota = quota_bytes
        self._keep_s = keep_s
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(BUCKET)
            except (BucketNotFoundError, NotFoundError):
                self._kv = await self._js.create_key_value(
                    KeyValueConfig(
                        bucket=BUCKET,
                        description="Ferry: each tenant's stored upload bytes (the upload quota)",
                        storage=StorageType.FILE,
                        replicas=self._replicas,
                    )
                )
        return self._kv

    async def _ledger(self, tenant: str) -> tuple[dict[str, list[float]], int | None]:
        """The tenant's live uploads (id -> [bytes, expires at]) and the ledger's revision."""
        try:
            entry = await (await self._bucket()).get(_key(tenant))
        except (KeyNotFoundError, NotFoundError):
            return {}, None
        now = time.time()
        uploads: dict[str, list[float]] = json.loads(entry.value or b"{}")
        return {k: v for k, v in uploads.items() if v[1] > now}, entry.revision

    async def room(self, tenant: str) -> int:
        """How many more bytes ``tenant`` may store now (0 or more)."""
        uploads, _ = await self._ledger(tenant)
        return max(0, self._quota - int(sum(size for size, _ in uploads.values())))

    async def charge(self, tenant: str, upload_id: str, size: int, quota_bytes: int | None = None) -> None:
        """Adds the upload ``upload_id`` of ``size`` bytes to the tenant's ledger (against
        ``quota_bytes`` when given: the gateway's quota, told to the jobs service per job).

        Raises:
            ResourceExhausted: UPLOAD_QUOTA_EXCEEDED, the upload does not fit the quota.
        """
        quota = self._quota if quota_bytes is None else quota_bytes
        for _ in range(_ROUNDS):
            uploads, revision = await self._ledger(tenant)
            used = int(sum(s for s, _ in uploads.values()))
            if used + size > quota:
                raise exceeded(quota, used, size)
            uploads[upload_id] = [size, time.time() + self._keep_s]
            if await self._write(tenant, uploads, revision):
                return
        raise exceeded(quota, used, size)

    async def refund(self, tenant: str, upload_id: str) -> None:
        """Takes ``upload_id`` off the ledger (its bytes were not stored after all)."""
        for _ in range(_ROUNDS):
            uploads, revision = await self._ledger(tenant)
            if uploads.pop(upload_id, None) is None or await self._write(tenant, uploads, revision):
                return

    async def _write(self, tenant: str, uploads: dict[str, list[float]], revision: int | None) -> bool:
        kv = await self._bucket()
        value = json.dumps(uploads).encode()
        try:
            if revision is None:
                await kv.create(_key(tenant), value)
            else:
                await kv.update(_key(tenant), value, last=revision)
        except KeyWrongLastSequenceError:
            return False  # another upload of the tenant wrote first: read again
        return True


def exceeded(quota: int, used: int, size: int) -> ResourceExhausted:
    """UPLOAD_QUOTA_EXCEEDED: ``size`` more bytes do not fit beside ``used`` of ``quota``."""
    return ResourceExhausted(
        f"this upload ({size} bytes) and the tenant's stored uploads ({used} bytes) exceed the "
        f"upload quota of {limits.describe(quota)} (upload_quota_bytes); uploads expire "
        "7 days after they were made",
        reason="UPLOAD_QUOTA_EXCEEDED",
        metadata={"limit": "upload_quota_bytes", "quota_bytes": str(quota), "used_bytes": str(used)},
    )
