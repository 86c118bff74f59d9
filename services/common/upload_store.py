"""The tenants' uploads as stored in the JetStream Object Store: what services that read them share.

The gateway writes uploads (``services/gateway/uploads.py``) and the jobs service reads the
manifests jobs name (``services/jobs/expander.py``); both find them through this.

Objects, all named under the tenant so a tenant reads only its own uploads:
``<tenant>/<id>`` the upload's index (JSON: its kind, size and files), ``<tenant>/<id>/<n>``
the zip's n-th file in name order, ``<tenant>/<id>/manifest`` a JSONL manifest as sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ferry.events.v1 import events_pb2
from services.common import objects
from services.common.errors import NotFound
from services.common.ids import parse_name
from services.common.result_stores import object_store
from services.common.upload_checks import JSONL, ZIP, Entry
from services.common.upload_quota import UploadQuota

BUCKET = "ferry_uploads"
#: How long an upload is kept: long enough to submit (and resubmit) the jobs that name it.
KEEP_DAYS = 7
#: The index object's description: tells an index from an upload stored whole by older gateways.
INDEX_DESCRIPTION = "ferry-upload-index/2"

__all__ = ["BUCKET", "JSONL", "KEEP_DAYS", "ZIP", "Index", "UploadStore", "object_name"]


@dataclass(frozen=True)
class Index:
    """What an upload holds: its kind, the size sent, and a zip's files (name, unpacked size)."""

    upload_id: uuid.UUID
    tenant: str
    kind: str
    size_bytes: int
    entries: list[Entry]
    """A zip's files in name order; a manifest has none (its lines are read from its object)."""
    lines: int = 0

    def entry_ref(self, position: int) -> events_pb2.ObjectRef:
        """The claim check of the zip's ``position``-th file."""
        return events_pb2.ObjectRef(
            bucket=BUCKET,
            name=f"{object_name(self.tenant, self.upload_id)}/{position}",
            size_bytes=self.entries[position].size,
        )

    def position_of(self, entry: str) -> int | None:
        """The position of the file named ``entry`` (None if the zip has none, or several).

        A name matches exactly, or else as the same text in Unicode NFC: a zip made on macOS
        spells ``é`` decomposed, and job results show names composed (``input_names``), so a
        manifest line may name the file either way.
        """
        found = self._positions.get(entry)
        if found is not None:
            return found
        same = self._positions_by_nfc.get(unicodedata.normalize("NFC", entry), [])
        return same[0] if len(same) == 1 else None

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        # Built once per index: a manifest names a zip's files line after line (10,000 x 10,000
        # comparisons when each line scanned the list). Names are unique: uploads refuse repeats.
        return {found.name: position for position, found in enumerate(self.entries)}

    @functools.cached_property
    def _positions_by_nfc(self) -> dict[str, list[int]]:
        by_nfc: dict[str, list[int]] = {}
        for position, found in enumerate(self.entries):
            by_nfc.setdefault(unicodedata.normalize("NFC", found.name), []).append(position)
        return by_nfc

    @property
    def manifest_object(self) -> str:
        """The object holding a JSONL manifest's bytes."""
        return f"{object_name(self.tenant, self.upload_id)}/manifest"


class UploadStore:
    """Reads the uploads in the Object Store bucket ``ferry_uploads`` (created on first use)."""

    def __init__(self, js: JetStreamContext, quota_bytes: int, replicas: int) -> None:
        self._js = js
        keep_s = KEEP_DAYS * 24 * 3600.0
        self._quota = UploadQuota(js, quota_bytes, keep_s, replicas)
        self._bucket: ObjectStore | None = None

    async def store(self) -> ObjectStore:
        """The bucket (created on first use)."""
        if self._bucket is None:
            self._bucket = await object_store(
                self._js, BUCKET, "Ferry: JSONL manifests and zips' images that jobs name", KEEP_DAYS
            )
        return self._bucket

    async def charge(self, index: Index, size: int, quota_bytes: int | None = None) -> None:
        """Adds ``size`` bytes stored for the upload (a fetched image) to its tenant's quota
        (``quota_bytes`` when given, else this store's), on the upload's own entry.

        Raises:
            ResourceExhausted: UPLOAD_QUOTA_EXCEEDED.
        """
        await self._quota.charge(index.tenant, str(index.upload_id), size, quota_bytes, add=True)

    async def index(self, tenant: str, name: str) -> Index:
        """The index of the upload ``uploads/{id}`` of ``tenant``.

        Raises:
            InvalidArgument: not an upload name. NotFound: UPLOAD_NOT_FOUND (none of this tenant's,
                kept past its KEEP_DAYS, or stored whole by a gateway from before indexes).
        """
        upload_id = parse_name(name, "uploads")
        bucket = await self.store()
        try:
            info = await bucket.get_info(object_name(tenant, upload_id))
            if info.description != INDEX_DESCRIPTION:
                raise NotFoundError
            found = await objects.read(self._js, BUCKET, bucket, object_name(tenant, upload_id))
        except (ObjectNotFoundError, NotFoundError):
            raise NotFound(
                f"upload {name} does not exist (uploads are kept {KEEP_DAYS} days); "
                "upload the file again with POST /v1/uploads (ferry upload FILE)",
                reason="UPLOAD_NOT_FOUND",
                metadata={"upload": name},
            ) from None
        body = json.loads(found or b"{}")
        entries = [Entry(entry_name, size) for entry_name, size in body["entries"]]
        return Index(upload_id, tenant, body["kind"], body["size_bytes"], entries, body["lines"])

    async def store_new(self, name: str, data: bytes) -> bool:
        """Stores ``data`` as object ``name`` unless that name is taken (then the object stored is
        kept: Ferry's names are of immutable bytes); whether it stored it.

        Nothing is asked before the bytes go (``objects.put(replace=False)``): two round trips to
        NATS where nats.py's ``put``, asked first, made four.
        """

        async def one() -> AsyncIterator[bytes]:
            yield data

        await self.store()  # the bucket, created on first use
        return await objects.put(self._js, BUCKET, name, one(), replace=False) is not None

    async def read_manifest(self, index: Index, into: IO[bytes]) -> None:
        """Copies a JSONL upload's bytes into the file ``into`` (not into memory), a batch of
        chunks at a time as the copy takes them (``objects.chunks``).

        nats.py's ``get`` reads through a push consumer: NATS sends the whole manifest (100 MB and
        more) as fast as it can, at its own priority, whatever pace the expander (in the idle CPU
        group) takes it at.
        """
        bucket = await self.store()
        async for chunk in objects.chunks(self._js, BUCKET, bucket, index.manifest_object):
            await asyncio.to_thread(into.write, chunk)
        await asyncio.to_thread(into.flush)


def object_name(tenant: str, upload_id: uuid.UUID) -> str:
    """The name of an upload's index object."""
    return f"{tenant}/{upload_id}"
