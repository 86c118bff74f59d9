"""Each tenant's stored upload bytes, bounded by a quota (UPLOAD_QUOTA_EXCEEDED, 429).

The Object Store cannot sum one tenant's objects without listing every object of the bucket, so
the gateway keeps a ledger per tenant in the JetStream KV bucket ``ferry_upload_usage``: the
uploads it stored, their sizes and when they expire (the bucket keeps uploads ``KEEP_DAYS``).
Every gateway replica reads and writes the same ledger with compare-and-set on its revision, so
the quota holds across replicas; an entry past its expiry no longer counts.

The ledger has one entry per upload, whatever the upload makes stored later: the images a JSONL
manifest names by URL, fetched and stored when its job expands, are added to the manifest's own
entry (``add``). An entry per image made every charge read and rewrite a ledger that grew with
each one: 27 ms of CPU per charge at 10,000 entries, so a 10,000-URL manifest spent minutes on
its quota alone, and concurrent charges lost their compare-and-set rounds. For the same reason a
tenant keeps at most ``limits.UPLOAD_TENANT_MAX_UPLOADS`` uploads at once; charges of one tenant
in one process take turns (no rounds lost to each other).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import defaultdict

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
        self._turns: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

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

    async def charge(
        self, tenant: str, upload_id: str, size: int, quota_bytes: int | None = None, add: bool = False
    ) -> None:
        """Charges the upload ``upload_id`` ``size`` bytes on the tenant's ledger (against
        ``quota_bytes`` when given: the gateway's quota, told to the jobs service per job).

        Args:
            add: add ``size`` to what the upload was charged already (images its manifest names,
                stored as its job expands), instead of charging a new upload.

        Raises:
            ResourceExhausted: UPLOAD_QUOTA_EXCEEDED, the bytes do not fit the quota, or a new
                upload is one more than the tenant may keep.
        """
        quota = self._quota if quota_bytes is None else quota_bytes
        async with self._turns[tenant]:
            for _ in range(_ROUNDS):
                uploads, revision = await self._ledger(tenant)
                used = int(sum(s for s, _ in uploads.values()))
                if used + size > quota:
                    raise exceeded(quota, used, size)
                charged = uploads.get(upload_id)
                if charged is None and len(uploads) >= limits.UPLOAD_TENANT_MAX_UPLOADS:
                    raise too_many(len(uploads))
                before = charged[0] if add and charged is not None else 0
                uploads[upload_id] = [before + size, time.time() + self._keep_s]
                if await self._write(tenant, uploads, revision):
                    return
            raise exceeded(quota, used, size)

    async def refund(self, tenant: str, upload_id: str) -> None:
        """Takes ``upload_id`` off the ledger (its bytes were not stored after all)."""
        async with self._turns[tenant]:
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


def too_many(kept: int) -> ResourceExhausted:
    """UPLOAD_QUOTA_EXCEEDED: the tenant keeps ``kept`` uploads, the most it may."""
    return ResourceExhausted(
        f"the tenant keeps {kept} uploads, the most it may at once "
        f"({limits.UPLOAD_TENANT_MAX_UPLOADS}); uploads expire 7 days after they were made: "
        "put more files in one zip or more lines in one manifest",
        reason="UPLOAD_QUOTA_EXCEEDED",
        metadata={"limit": "upload_tenant_max_uploads", "uploads": str(kept)},
    )
