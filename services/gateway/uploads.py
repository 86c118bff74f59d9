"""Uploads: JSONL manifests and zips of images kept in the JetStream Object Store for jobs to name.

A job of thousands of items would not fit one request (nor one NATS message) with its images
inline; an upload is sent once (``CreateUpload``, client-streamed: ``POST /v1/uploads`` with the
raw bytes through Envoy's transcoder) and a job names it (``CreateJob.manifest``, see
``manifests.py``).

Memory: the gateway never holds an upload whole. The pieces are written to a spool file as they
arrive, at most ``upload_buffer_bytes`` held at a time, and refused once past
``max_upload_bytes`` or the tenant's quota room. A zip's directory is at its end, so only the
whole spooled file can be judged (``upload_checks``); then each of its files is copied into the
Object Store as its own object, inflated in a worker thread 128 KiB at a time, its CRC checked
at its end. A job item made from a zip file carries a reference to that object (a claim check,
``ferry.events.v1.ObjectRef``), never its bytes: the runner reads it when it runs the item.

Objects, all named under the tenant so a tenant reads only its own uploads:
``<tenant>/<id>`` the upload's index (JSON: its kind, size and files), ``<tenant>/<id>/<n>``
the zip's n-th file in name order, ``<tenant>/<id>/manifest`` a JSONL manifest as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_service_pb2
from services.common import limits
from services.common.errors import InvalidArgument, NotFound
from services.common.ids import parse_name
from services.common.result_stores import object_store
from services.gateway import upload_checks
from services.gateway.settings import GatewaySettings
from services.gateway.upload_checks import JSONL, ZIP, Entry, UploadLimits
from services.gateway.upload_quota import UploadQuota, exceeded

log = logging.getLogger(__name__)

BUCKET = "ferry_uploads"
#: How long an upload is kept: long enough to submit (and resubmit) the jobs that name it.
KEEP_DAYS = 7
#: Chunks of a stored upload's objects (a zip's files, a manifest): 1 MiB (nats-py's default is
#: 128 KiB). Each chunk is one JetStream publish and acknowledgement, hashed on the event loop;
#: eight times fewer of them cut the gateway's CPU per uploaded MB (docs/benchmarks.md).
#: Far under NATS's max_payload (8 MiB in every deployment: devstack/infra.py, compose, chart).
OBJECT_CHUNK_BYTES = 1024 * 1024
#: The index object's description: tells an index from an upload stored whole by older gateways.
_INDEX = "ferry-upload-index/2"

__all__ = ["BUCKET", "JSONL", "KEEP_DAYS", "ZIP", "Index", "Uploads"]


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
        """The position of the file named ``entry`` (None if the zip has none)."""
        for position, found in enumerate(self.entries):
            if found.name == entry:
                return position
        return None

    @property
    def manifest_object(self) -> str:
        """The object holding a JSONL manifest's bytes."""
        return f"{object_name(self.tenant, self.upload_id)}/manifest"


class Uploads:
    """The tenants' uploads in the Object Store bucket ``ferry_uploads`` (created on first use)."""

    def __init__(self, js: JetStreamContext, settings: GatewaySettings) -> None:
        self._js = js
        self._s = settings
        self.max_image_bytes = settings.max_image_bytes
        """The largest image stored for a job: the image limit, not NATS's message size (an
        item carries its image's reference, not its bytes)."""
        self._bounds = UploadLimits(
            max_entries=settings.upload_max_entries,
            max_unpacked_bytes=settings.upload_max_unpacked_bytes,
            max_ratio=settings.upload_max_compression_ratio,
            max_entry_bytes=settings.max_image_bytes,
        )
        keep_s = KEEP_DAYS * 24 * 3600.0
        self._quota = UploadQuota(js, settings.upload_quota_bytes, keep_s, settings.nats_stream_replicas)
        self._bucket: ObjectStore | None = None

    async def store(self) -> ObjectStore:
        """The bucket (created on first use)."""
        if self._bucket is None:
            self._bucket = await object_store(
                self._js, BUCKET, "Ferry: JSONL manifests and zips' images that jobs name", KEEP_DAYS
            )
        return self._bucket

    async def create(
        self, tenant: str, pieces: AsyncIterator[job_service_pb2.CreateUploadRequest]
    ) -> job_service_pb2.Upload:
        """Stores the streamed bytes as a new upload of ``tenant`` and describes it.

        Raises:
            InvalidArgument: UPLOAD_TOO_LARGE past ``max_upload_bytes`` (refused as soon as it is
                exceeded, before the rest arrives), or a refusal of ``upload_checks``.
            ResourceExhausted: UPLOAD_QUOTA_EXCEEDED.
        """
        room = await self._quota.room(tenant)
        spool_dir = self._s.upload_spool_dir or None
        with tempfile.NamedTemporaryFile(prefix="ferry-upload-", dir=spool_dir) as spool:
            size, head = await self._receive(pieces, spool, room)
            upload_id = uuid.uuid4()
            path = Path(spool.name)
            if upload_checks.kind_of(head) == ZIP:
                index = await self._store_zip(tenant, upload_id, path, size)
            else:
                index = await self._store_manifest(tenant, upload_id, path, size)
        count = len(index.entries) if index.kind == ZIP else index.lines
        return job_service_pb2.Upload(
            name=f"uploads/{upload_id}", kind=index.kind, size_bytes=size, entries=count
        )

    async def _receive(
        self, pieces: AsyncIterator[job_service_pb2.CreateUploadRequest], spool: IO[bytes], room: int
    ) -> tuple[int, bytes]:
        """Writes the pieces to ``spool``, at most ``upload_buffer_bytes`` held at a time; returns
        the size and the first bytes (what the upload is)."""
        buffered = bytearray()
        size = 0
        head = b""
        async for piece in pieces:
            data = piece.body.data
            size += len(data)
            if size > self._s.max_upload_bytes:
                raise InvalidArgument(
                    f"the upload is larger than the limit of {limits.describe(self._s.max_upload_bytes)}; "
                    "split it into several uploads and jobs",
                    reason="UPLOAD_TOO_LARGE",
                    metadata={"max_bytes": str(self._s.max_upload_bytes)},
                )
            if size > room:
                raise exceeded(self._s.upload_quota_bytes, self._s.upload_quota_bytes - room, size)
            if len(head) < 4:
                head += data[:4]
            buffered += data
            if len(buffered) >= self._s.upload_buffer_bytes:
                await asyncio.to_thread(spool.write, buffered)
                buffered = bytearray()
        await asyncio.to_thread(spool.write, buffered)
        await asyncio.to_thread(spool.flush)
        if not size:
            raise upload_checks.invalid(
                "the upload is empty; send a JSONL manifest (one item per line) or a zip of images"
            )
        return size, head

    async def _store_zip(self, tenant: str, upload_id: uuid.UUID, path: Path, size: int) -> Index:
        with upload_checks.open_zip(path) as archive:
            files = await asyncio.to_thread(upload_checks.zip_entries, archive, self._bounds)
            index = Index(upload_id, tenant, ZIP, size, [entry for entry, _ in files])
            unpacked = sum(entry.size for entry in index.entries)
            await self._quota.charge(tenant, str(upload_id), unpacked)
            bucket = await self.store()
            stored = 0
            try:
                for position, (entry, info) in enumerate(files):
                    name = index.entry_ref(position).name
                    stored = position + 1
                    try:
                        with archive.open(info) as unpacking:
                            # A BufferedIOBase: nats reads it chunk by chunk in a worker thread.
                            await bucket.put(name, unpacking, _chunked(name))  # type: ignore[arg-type]
                    except upload_checks.ZIP_ERRORS as err:
                        raise upload_checks.broken_entry(entry.name, err) from None
                await self._put_index(bucket, index)
            except BaseException:
                await self._forget(tenant, index, stored)
                raise
        return index

    async def _store_manifest(self, tenant: str, upload_id: uuid.UUID, path: Path, size: int) -> Index:
        lines = await asyncio.to_thread(upload_checks.manifest_lines, path, self._bounds)
        index = Index(upload_id, tenant, JSONL, size, [], lines)
        await self._quota.charge(tenant, str(upload_id), size)
        bucket = await self.store()
        try:
            with path.open("rb") as spooled:
                await bucket.put(index.manifest_object, spooled, _chunked(index.manifest_object))
            await self._put_index(bucket, index)
        except BaseException:
            await self._forget(tenant, index, 0)
            raise
        return index

    async def _put_index(self, bucket: ObjectStore, index: Index) -> None:
        body = {
            "kind": index.kind,
            "size_bytes": index.size_bytes,
            "lines": index.lines,
            "entries": [[entry.name, entry.size] for entry in index.entries],
        }
        name = object_name(index.tenant, index.upload_id)
        await bucket.put(name, json.dumps(body).encode(), ObjectMeta(name=name, description=_INDEX))

    async def _forget(self, tenant: str, index: Index, entries: int) -> None:
        """Deletes what a refused or failed upload stored and refunds its quota (best effort:
        what is left expires with the bucket's KEEP_DAYS)."""
        with contextlib.suppress(NatsError, TimeoutError):
            bucket = await self.store()
            names = [index.entry_ref(p).name for p in range(entries)]
            if index.kind == JSONL:
                names.append(index.manifest_object)
            for name in names:
                with contextlib.suppress(ObjectNotFoundError, NotFoundError):
                    await bucket.delete(name)
            await self._quota.refund(tenant, str(index.upload_id))

    async def charge(self, index: Index, suffix: str, size: int) -> None:
        """Charges ``size`` bytes stored for the upload (a fetched image) to its tenant's quota.

        Raises:
            ResourceExhausted: UPLOAD_QUOTA_EXCEEDED.
        """
        await self._quota.charge(index.tenant, f"{index.upload_id}/{suffix}", size)

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
            if info.description != _INDEX:
                raise NotFoundError
            found = await bucket.get(object_name(tenant, upload_id))
        except (ObjectNotFoundError, NotFoundError):
            raise NotFound(
                f"upload {name} does not exist (uploads are kept {KEEP_DAYS} days); "
                "upload the file again with POST /v1/uploads (ferry upload FILE)",
                reason="UPLOAD_NOT_FOUND",
                metadata={"upload": name},
            ) from None
        body = json.loads(found.data or b"{}")
        entries = [Entry(entry_name, size) for entry_name, size in body["entries"]]
        return Index(upload_id, tenant, body["kind"], body["size_bytes"], entries, body["lines"])

    async def read_manifest(self, index: Index, into: IO[bytes]) -> None:
        """Copies a JSONL upload's bytes into the file ``into`` (not into memory)."""
        bucket = await self.store()
        await bucket.get(index.manifest_object, writeinto=into)  # type: ignore[arg-type]
        await asyncio.to_thread(into.flush)


def _chunked(name: str) -> ObjectMeta:
    return ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=OBJECT_CHUNK_BYTES))


def object_name(tenant: str, upload_id: uuid.UUID) -> str:
    """The name of an upload's index object."""
    return f"{tenant}/{upload_id}"
