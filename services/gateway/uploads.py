"""Uploads: JSONL manifests and zips of images kept in the JetStream Object Store for jobs to name.

A job of thousands of items would not fit one request (nor one NATS message) with its images
inline; an upload is sent once (``CreateUpload``, client-streamed: ``POST /v1/uploads`` with the
raw bytes through Envoy's transcoder) and a job names it (``CreateJob.manifest``, see
``manifests.py``). The bytes are counted as they arrive and refused past ``max_upload_bytes``;
they are held in the gateway's memory until stored (the Object Store's ``put`` takes them whole).
Objects are named ``<tenant>/<id>``, so a tenant reads only its own uploads.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ferry.jobs.v1 import job_service_pb2
from services.common import limits
from services.common.errors import InvalidArgument, NotFound
from services.common.ids import parse_name
from services.common.result_stores import object_store

BUCKET = "ferry_uploads"
#: How long an upload is kept: long enough to submit (and resubmit) the jobs that name it.
KEEP_DAYS = 7
ZIP = "zip"
JSONL = "jsonl"


@dataclass(frozen=True)
class Stored:
    """An upload's bytes and what they are."""

    upload_id: uuid.UUID
    kind: str
    data: bytes


def inspect(data: bytes) -> tuple[str, int]:
    """What ``data`` is (``zip`` or ``jsonl``) and how many items it makes: files or non-blank lines.

    Raises:
        InvalidArgument: INVALID_UPLOAD: empty, a broken zip, a zip without files, or not UTF-8 text.
    """
    if data.startswith(b"PK"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                files = zip_files(archive)
        except zipfile.BadZipFile as err:
            raise _invalid(f"the upload starts like a zip but is not a readable one ({err})") from None
        if not files:
            raise _invalid("the zip holds no files; put the images in it")
        return ZIP, len(files)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _invalid(f"the upload is neither a zip nor UTF-8 JSONL text (byte {err.start})") from None
    lines = sum(1 for line in text.splitlines() if line.strip())
    if not lines:
        raise _invalid("the upload is empty; send a JSONL manifest (one item per line) or a zip of images")
    return JSONL, lines


def zip_files(archive: zipfile.ZipFile) -> list[str]:
    """The names of a zip's files (not folders), in name order: the order of a zip upload's items."""
    return sorted(info.filename for info in archive.infolist() if not info.is_dir())


def _invalid(why: str) -> InvalidArgument:
    return InvalidArgument(
        f"{why}; POST /v1/uploads takes a JSONL manifest or a zip of images",
        reason="INVALID_UPLOAD",
        metadata={"field": "body"},
    )


class Uploads:
    """The tenants' uploads in the Object Store bucket ``ferry_uploads`` (created on first use)."""

    def __init__(self, js: JetStreamContext, max_bytes: int) -> None:
        self._js = js
        self._max_bytes = max_bytes
        self._bucket: ObjectStore | None = None

    async def _store(self) -> ObjectStore:
        if self._bucket is None:
            self._bucket = await object_store(
                self._js, BUCKET, "Ferry: JSONL manifests and zips of images that jobs name", KEEP_DAYS
            )
        return self._bucket

    async def create(
        self, tenant: str, pieces: AsyncIterator[job_service_pb2.CreateUploadRequest]
    ) -> job_service_pb2.Upload:
        """Stores the streamed bytes as a new upload of ``tenant`` and describes it.

        Raises:
            InvalidArgument: UPLOAD_TOO_LARGE past ``max_bytes`` (refused as soon as it is
                exceeded, before the rest arrives), or INVALID_UPLOAD (see ``inspect``).
        """
        data = bytearray()
        async for piece in pieces:
            data += piece.body.data
            if len(data) > self._max_bytes:
                raise InvalidArgument(
                    f"the upload is larger than the limit of {limits.describe(self._max_bytes)}; "
                    "split it into several uploads and jobs",
                    reason="UPLOAD_TOO_LARGE",
                    metadata={"max_bytes": str(self._max_bytes)},
                )
        body = bytes(data)
        kind, entries = inspect(body)
        upload_id = uuid.uuid4()
        await (await self._store()).put(_object_name(tenant, upload_id), body)
        return job_service_pb2.Upload(
            name=f"uploads/{upload_id}", kind=kind, size_bytes=len(body), entries=entries
        )

    async def read(self, tenant: str, name: str) -> Stored:
        """The upload ``uploads/{id}`` of ``tenant``.

        Raises:
            InvalidArgument: not an upload name. NotFound: UPLOAD_NOT_FOUND (none of this tenant's,
                or kept past its KEEP_DAYS).
        """
        upload_id = parse_name(name, "uploads")
        try:
            found = await (await self._store()).get(_object_name(tenant, upload_id))
        except (ObjectNotFoundError, NotFoundError):
            raise NotFound(
                f"upload {name} does not exist (uploads are kept {KEEP_DAYS} days); "
                "upload the file again with POST /v1/uploads (ferry upload FILE)",
                reason="UPLOAD_NOT_FOUND",
                metadata={"upload": name},
            ) from None
        data = found.data or b""
        return Stored(upload_id, inspect(data)[0], data)


def _object_name(tenant: str, upload_id: uuid.UUID) -> str:
    return f"{tenant}/{upload_id}"
