"""Uploads: JSONL manifests and zips of images kept in the JetStream Object Store for jobs to name.

A job of thousands of items would not fit one request (nor one NATS message) with its images
inline; an upload is sent once (``CreateUpload``, client-streamed: ``POST /v1/uploads`` with the
raw bytes through Envoy's transcoder) and a job names it (``CreateJob.manifest``, see
``manifests.py``).

Memory: the gateway never holds an upload whole. The pieces are written to a spool file as they
arrive, at most ``upload_buffer_bytes`` held at a time, and refused once past
``max_upload_bytes`` or the tenant's quota room. A JSONL manifest is checked as it is spooled
(``upload_checks.ManifestScan``), so one past a limit is refused before the rest arrives. A
zip's directory is at its end, so only the whole spooled file can be judged (``upload_checks``);
then each of its files is copied into the
Object Store as its own object, inflated in a worker thread 1 MiB at a time, its CRC checked
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
import zipfile
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import IO, Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ferry.jobs.v1 import job_service_pb2
from services.common import limits, upload_checks
from services.common.errors import InvalidArgument
from services.common.upload_checks import Entry, UploadLimits
from services.common.upload_quota import exceeded
from services.common.upload_store import (
    BUCKET,
    INDEX_DESCRIPTION,
    JSONL,
    KEEP_DAYS,
    ZIP,
    Index,
    UploadStore,
    object_name,
)
from services.gateway.settings import GatewaySettings
from services.gateway.spool import Held, SpoolBudget

log = logging.getLogger(__name__)

#: Chunks of a stored upload's objects (a zip's files, a manifest): 1 MiB (nats-py's default is
#: 128 KiB). Each chunk is one JetStream publish and acknowledgement, hashed on the event loop;
#: eight times fewer of them cut the gateway's CPU per uploaded MB (docs/benchmarks.md).
#: Far under NATS's max_payload (8 MiB in every deployment: devstack/infra.py, compose, chart).
OBJECT_CHUNK_BYTES = 1024 * 1024
#: A zip's files stored at once (``_put_files``): enough to overlap their JetStream round trips,
#: few enough that the files read whole (at most OBJECT_CHUNK_BYTES each) stay a few MiB.
PUT_CONCURRENCY = 8
#: Files larger than this (more than one chunk) are stored one at a time, nothing else of the
#: process's uploads stored meanwhile, so each one's chunks lie together in the stream. Stored
#: side by side, 8 files' chunks alternated, and reading one file (the runner's claim check) made
#: NATS load every 8 MB block of the stream that held one of its chunks: 8 times its size, held
#: until Go's next GC (docs/benchmarks.md, session 10). Together, a file spans 2-3 blocks.
ALONE_ABOVE_BYTES = OBJECT_CHUNK_BYTES
__all__ = ["BUCKET", "JSONL", "KEEP_DAYS", "ZIP", "Index", "Uploads"]


class Uploads(UploadStore):
    """Writes the tenants' uploads (and reads them, as every UploadStore does)."""

    def __init__(self, js: JetStreamContext, settings: GatewaySettings) -> None:
        super().__init__(js, settings.upload_quota_bytes, settings.nats_stream_replicas)
        self._s = settings
        self._spool = SpoolBudget(settings.upload_spool_bytes)
        self._puts = _Puts()
        self.max_image_bytes = settings.max_image_bytes
        """The largest image stored for a job: the image limit, not NATS's message size (an
        item carries its image's reference, not its bytes)."""
        self._bounds = UploadLimits(
            max_entries=settings.upload_max_entries,
            max_unpacked_bytes=settings.upload_max_unpacked_bytes,
            max_ratio=settings.upload_max_compression_ratio,
            max_entry_bytes=settings.max_image_bytes,
        )

    async def create(
        self, tenant: str, pieces: AsyncIterator[job_service_pb2.CreateUploadRequest]
    ) -> job_service_pb2.Upload:
        """Stores the streamed bytes as a new upload of ``tenant`` and describes it.

        Raises:
            InvalidArgument: UPLOAD_TOO_LARGE past ``max_upload_bytes``, or a refusal of
                ``upload_checks`` (a manifest's, and these, as soon as known: before the rest arrives).
            ResourceExhausted: UPLOAD_QUOTA_EXCEEDED.
        """
        room = await self._quota.room(tenant)
        spool_dir = self._s.upload_spool_dir or None
        with (
            self._spool.hold() as spooled,
            tempfile.NamedTemporaryFile(prefix="ferry-upload-", dir=spool_dir) as spool,
        ):
            size, scan = await self._receive(pieces, spool, spooled, room)
            upload_id = uuid.uuid4()
            path = Path(spool.name)
            skipped = 0
            if scan is None:
                index, skipped = await self._store_zip(tenant, upload_id, path, size)
            else:
                index = await self._store_manifest(tenant, upload_id, path, size, scan.finish())
        count = len(index.entries) if index.kind == ZIP else index.lines
        return job_service_pb2.Upload(
            name=f"uploads/{upload_id}",
            kind=index.kind,
            size_bytes=size,
            entries=count,
            skipped_entries=skipped,
        )

    async def _receive(
        self,
        pieces: AsyncIterator[job_service_pb2.CreateUploadRequest],
        spool: IO[bytes],
        spooled: Held,
        room: int,
    ) -> tuple[int, upload_checks.ManifestScan | None]:
        """Writes the pieces to ``spool``, at most ``upload_buffer_bytes`` held at a time, each
        write's bytes taken from the spool's budget first; returns the size and, for a manifest,
        its scan, fed every byte (None for a zip)."""
        buffered = bytearray()
        size = count = 0
        head = b""
        scan: upload_checks.ManifestScan | None = None
        known = False  # whether the upload's kind is known: at its first write (head whole by then)
        async for piece in pieces:
            data = piece.body.data
            size += len(data)
            count += 1
            if count > limits.UPLOAD_FREE_PIECES and size < count * limits.UPLOAD_MIN_PIECE_BYTES:
                raise upload_checks.invalid(
                    f"the upload arrives in {count} pieces of {size // count} bytes on average; send it in "
                    f"pieces of at least {limits.UPLOAD_MIN_PIECE_BYTES} bytes (each costs the same to take)",
                    limit="upload_min_piece_bytes",
                )
            if size > self._s.max_upload_bytes:
                raise InvalidArgument(
                    f"the upload is larger than the limit of {limits.describe(self._s.max_upload_bytes)}; "
                    "split it into several uploads and jobs",
                    reason="UPLOAD_TOO_LARGE",
                    metadata={"max_bytes": str(self._s.max_upload_bytes)},
                )
            if size > room:
                raise exceeded(self._s.upload_quota_bytes, self._s.upload_quota_bytes - room, size)
            if len(head) < upload_checks.HEAD_BYTES:
                head += data[: upload_checks.HEAD_BYTES - len(head)]
            buffered += data
            if len(buffered) >= self._s.upload_buffer_bytes:  # >= 64 KiB: the head is whole
                if not known:
                    scan, known = self._scan_of(head), True
                spooled.take(len(buffered))
                await asyncio.to_thread(_write, spool, buffered, scan)
                buffered = bytearray()
        if not known:
            scan = self._scan_of(head)
        spooled.take(len(buffered))
        await asyncio.to_thread(_write, spool, buffered, scan)
        await asyncio.to_thread(spool.flush)
        if not size:
            raise upload_checks.invalid("the upload is empty (0 bytes)")
        return size, scan

    def _scan_of(self, head: bytes) -> upload_checks.ManifestScan | None:
        """The scan of a manifest starting with ``head``, None for a zip.

        Raises:
            InvalidArgument: INVALID_UPLOAD for a known mistake (``refuse_known_mistakes``),
                named before any scan could call it "not UTF-8".
        """
        if upload_checks.kind_of(head) == ZIP:
            return None
        upload_checks.refuse_known_mistakes(head)
        return upload_checks.ManifestScan(self._bounds)

    async def _store_zip(self, tenant: str, upload_id: uuid.UUID, path: Path, size: int) -> tuple[Index, int]:
        """The stored zip's index, and how many of its files were an OS's bookkeeping (not stored)."""
        # Off the event loop: zipfile reads the zip's whole directory as it opens.
        archive = await asyncio.to_thread(upload_checks.open_zip, path, self._bounds)
        with archive:
            found = await asyncio.to_thread(upload_checks.zip_entries, archive, self._bounds)
            files = found.files
            index = Index(upload_id, tenant, ZIP, size, [entry for entry, _ in files])
            unpacked = sum(entry.size for entry in index.entries)
            await self._quota.charge(tenant, str(upload_id), unpacked)
            bucket = await self.store()
            started = [0]
            try:
                await self._put_files(bucket, archive, index, files, started)
                await self._put_index(bucket, index)
            except BaseException:
                await self._forget(tenant, index, started[0])
                raise
        return index, found.skipped

    async def _put_files(
        self,
        bucket: ObjectStore,
        archive: zipfile.ZipFile,
        index: Index,
        files: list[tuple[Entry, zipfile.ZipInfo]],
        started: list[int],
    ) -> None:
        """Stores the zip's files, PUT_CONCURRENCY at a time: each put is a few JetStream round
        trips and a worker thread's read, which one after another left a 10,000-file zip 11 s of
        mostly waiting. A file of more than one chunk is stored alone (``ALONE_ABOVE_BYTES``).
        ``started[0]`` counts the files begun, for ``_forget``. The first failure cancels the rest
        and is raised."""
        running: set[asyncio.Task[None]] = set()
        try:
            for position, (entry, info) in enumerate(files):
                alone = info.file_size > ALONE_ABOVE_BYTES
                while running and (alone or len(running) >= PUT_CONCURRENCY):
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    _raise_first_failure(done)
                started[0] = position + 1
                put = _put_file(bucket, archive, index.entry_ref(position).name, entry, info)
                running.add(asyncio.create_task(self._puts.run(put, alone)))
            while running:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                _raise_first_failure(done)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _store_manifest(
        self, tenant: str, upload_id: uuid.UUID, path: Path, size: int, lines: int
    ) -> Index:
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
        await bucket.put(
            name, json.dumps(body).encode(), ObjectMeta(name=name, description=INDEX_DESCRIPTION)
        )

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


class _Puts:
    """The process's Object Store puts of zips' files: small ones side by side, each larger one
    (``ALONE_ABOVE_BYTES``) alone, so that no other upload's chunks land between its own."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._side_by_side = 0
        self._alone = False
        self._waiting_alone = 0

    async def run(self, put: Coroutine[Any, Any, None], alone: bool) -> None:
        """Runs ``put`` when its turn comes (a file waiting to be stored alone goes first)."""
        try:
            async with self._changed:
                if alone:
                    self._waiting_alone += 1
                    try:
                        await self._changed.wait_for(lambda: not self._alone and not self._side_by_side)
                    finally:
                        self._waiting_alone -= 1
                        self._changed.notify_all()
                    self._alone = True
                else:
                    await self._changed.wait_for(lambda: not self._alone and not self._waiting_alone)
                    self._side_by_side += 1
        except BaseException:
            put.close()  # cancelled before its turn: never started
            raise
        try:
            await put
        finally:
            async with self._changed:
                if alone:
                    self._alone = False
                else:
                    self._side_by_side -= 1
                self._changed.notify_all()


def _raise_first_failure(done: set[asyncio.Task[None]]) -> None:
    """Raises the first failure among ``done``, having read every one's: a failure never read is
    logged by asyncio as "Task exception was never retrieved", with its traceback, when the task
    is collected (two broken files of one zip finished together)."""
    failures = [task.exception() for task in done]
    for failure in failures:
        if failure is not None:
            raise failure


async def _put_file(
    bucket: ObjectStore, archive: zipfile.ZipFile, name: str, entry: Entry, info: zipfile.ZipInfo
) -> None:
    """Stores one file of the zip as the object ``name``: a file of one chunk or less read whole in
    a worker thread (one thread hop, where nats reading a file object takes one per chunk and one
    more for its end), a larger one streamed a chunk at a time."""
    try:
        if info.file_size <= OBJECT_CHUNK_BYTES:
            data = await asyncio.to_thread(_read_whole, archive, info)
            # nats allocates a chunk of the size given for every put: a 1 MiB one zeroed for
            # each of 10,000 small files cost a quarter of a millisecond each.
            await bucket.put(name, data, _chunked(name, max(len(data), 1)))
            return
        with archive.open(info) as unpacking:
            # A BufferedIOBase: nats reads it chunk by chunk in a worker thread.
            await bucket.put(name, unpacking, _chunked(name))  # type: ignore[arg-type]
    except (*upload_checks.ZIP_ERRORS, OSError) as err:
        if not upload_checks.broken(info, err):
            raise  # the spool disk failed: a fault of ours
        raise upload_checks.broken_entry(entry.name, err) from None


def _read_whole(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    # The whole file, its CRC checked at its end; at most info.file_size bytes (the directory's
    # size, checked against the limits) are read, so a file that inflates past it fails its CRC.
    with archive.open(info) as unpacking:
        return unpacking.read(info.file_size + 1)


def _write(spool: IO[bytes], data: bytearray, scan: upload_checks.ManifestScan | None) -> None:
    """Scans ``data`` (a manifest's), then writes it to the spool: one worker-thread call, so a
    manifest past a limit is refused as the block that shows it arrives, off the event loop."""
    if scan is not None:
        scan.feed(data)
    spool.write(data)


def _chunked(name: str, chunk_bytes: int = OBJECT_CHUNK_BYTES) -> ObjectMeta:
    return ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=chunk_bytes))
