"""Where jobs' result files are kept: NATS JetStream Object Store (default) or an S3-compatible store.

Both answer the same three questions (is the file there, store it, read it); which one is used
is a ``results_url`` setting (``FERRY_JOBS_RESULTS_URL`` for the jobs service, which writes result
files and executed notebooks; ``FERRY_GATEWAY_RESULTS_URL`` for the gateways, which read them: the
same store). Shared here because both services use it. The Object Store needs no infrastructure
beyond the NATS that jobs already use; S3 suits files that should outlive NATS's storage or be
read by other tools. boto3 is synchronous, so its calls run in a worker thread.

A file too large to hold (a job's result file: about 55 MB at 10,000 items and top_k 100) is
written from pieces as they are made (``put_pieces``) and becomes visible only when whole: in
the Object Store its meta message comes after its last chunk (``objects.put``: of two writers at
once the first to finish wins); in S3 it is a multipart upload, which exists only once completed
(of two writers the last to complete wins; both wrote the same records, and a reader's GET reads one
version whole). A write that fails midway deletes its chunks (aborts its upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any, Protocol
from urllib.parse import urlparse

from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from services.common import objects

log = logging.getLogger(__name__)

BUCKET = "ferry_job_results"
#: How long the Object Store keeps a result file (an S3 bucket's lifecycle rules decide there).
KEEP_DAYS = 30
#: Bytes of an S3 file read at a time by ``S3Results.chunks``.
_S3_PIECE_BYTES = 1024 * 1024
#: S3's smallest part of a multipart upload, but for the last: ``put_pieces``'s pieces must be as large.
S3_MIN_PART_BYTES = 5 * 1024 * 1024


class ResultStore(Protocol):
    """A place for result files, by name."""

    where: str
    """The store, for logs: ``nats:ferry_job_results`` or ``s3://bucket/prefix``."""

    async def exists(self, name: str) -> bool:
        """Whether the file ``name`` is stored."""
        ...

    async def put(self, name: str, data: bytes) -> None:
        """Stores ``data`` as ``name`` (replacing any file of that name)."""
        ...

    async def put_pieces(self, name: str, pieces: AsyncIterable[bytes | bytearray]) -> bool:
        """Stores the ``pieces`` as ``name``, one piece at a time, the file visible only once whole.
        Every piece but the last must hold at least ``S3_MIN_PART_BYTES`` (S3's smallest part).

        Returns:
            False when another writer stored ``name`` meanwhile and its file was kept.

        Raises:
            Whatever the pieces or the store raised: nothing was stored under ``name``.
        """
        ...

    async def get(self, name: str) -> bytes:
        """The file ``name``.

        Raises:
            KeyError: there is none.
        """
        ...

    def chunks(self, name: str) -> AsyncGenerator[bytes, None]:
        """The file ``name`` in pieces as they are read, for a reader that need not hold it whole.
        Close the iterator when stopping early (``contextlib.aclosing``): that frees what it holds.

        Raises:
            KeyError: there is none.
        """
        ...


class NatsResults:
    """Result files in the JetStream Object Store bucket ``ferry_job_results`` (created on first use)."""

    where = f"nats:{BUCKET}"

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._bucket: ObjectStore | None = None

    async def _store(self) -> ObjectStore:
        if self._bucket is None:
            self._bucket = await object_store(
                self._js, BUCKET, "Ferry: one result file per finished job", KEEP_DAYS
            )
        return self._bucket

    async def exists(self, name: str) -> bool:
        try:
            await (await self._store()).get_info(name)
        except (ObjectNotFoundError, NotFoundError):
            return False
        return True

    async def put(self, name: str, data: bytes) -> None:
        await (await self._store()).put(name, data)

    async def put_pieces(self, name: str, pieces: AsyncIterable[bytes | bytearray]) -> bool:
        await self._store()  # the bucket, created on first use
        return await objects.put(self._js, BUCKET, name, pieces) is not None

    async def get(self, name: str) -> bytes:
        try:
            return await objects.read(self._js, BUCKET, await self._store(), name)
        except (ObjectNotFoundError, NotFoundError):
            raise KeyError(name) from None

    async def chunks(self, name: str) -> AsyncGenerator[bytes, None]:
        try:
            async with contextlib.aclosing(
                objects.chunks(self._js, BUCKET, await self._store(), name)
            ) as read:
                async for chunk in read:
                    yield chunk
        except (ObjectNotFoundError, NotFoundError):
            raise KeyError(name) from None


async def object_store(js: JetStreamContext, bucket: str, description: str, keep_days: int) -> ObjectStore:
    """The Object Store bucket ``bucket``, created (file storage, objects kept ``keep_days``) if missing."""
    try:
        return await js.object_store(bucket)
    except (BucketNotFoundError, NotFoundError):
        config = ObjectStoreConfig(
            bucket=bucket, description=description, ttl=keep_days * 24 * 3600.0, storage=StorageType.FILE
        )
        return await js.create_object_store(bucket, config)


class S3Results:
    """Result files as objects ``<prefix>/<name>`` of an S3 bucket (any S3-compatible API)."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._client = client
        self.where = f"s3://{bucket}/{self._prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    async def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            await asyncio.to_thread(self._client.head_object, Bucket=self._bucket, Key=self._key(name))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(
            self._client.put_object,
            Bucket=self._bucket,
            Key=self._key(name),
            Body=data,
            ContentType="application/x-ndjson",
        )

    async def put_pieces(self, name: str, pieces: AsyncIterable[bytes | bytearray]) -> bool:
        # A multipart upload, its parts the pieces: the object exists only once it is completed.
        key = dict(Bucket=self._bucket, Key=self._key(name))
        started = await asyncio.to_thread(
            self._client.create_multipart_upload, **key, ContentType="application/octet-stream"
        )
        upload = started["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            async for piece in pieces:
                number = len(parts) + 1
                sent = await asyncio.to_thread(
                    self._client.upload_part, **key, UploadId=upload, PartNumber=number, Body=piece
                )
                parts.append({"ETag": sent["ETag"], "PartNumber": number})
            if not parts:  # an empty file: S3 completes no upload of no parts
                sent = await asyncio.to_thread(
                    self._client.upload_part, **key, UploadId=upload, PartNumber=1, Body=b""
                )
                parts.append({"ETag": sent["ETag"], "PartNumber": 1})
            done = {"Parts": parts}
            await asyncio.to_thread(
                self._client.complete_multipart_upload, **key, UploadId=upload, MultipartUpload=done
            )
        except BaseException:  # cancelled too: an upload left open keeps its parts (and costs)
            try:
                await asyncio.to_thread(self._client.abort_multipart_upload, **key, UploadId=upload)
            except Exception as err:  # must not hide why the write ended
                log.warning("could not abort the upload of %s: %s", self._key(name), err)
            raise
        return True

    async def _body(self, name: str) -> Any:
        """The object's streaming body (botocore's ``StreamingBody``), not read yet."""
        from botocore.exceptions import ClientError

        try:
            answer = await asyncio.to_thread(
                self._client.get_object, Bucket=self._bucket, Key=self._key(name)
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(name) from None
            raise
        return answer["Body"]

    async def get(self, name: str) -> bytes:
        body: bytes = await asyncio.to_thread((await self._body(name)).read)
        return body

    async def chunks(self, name: str) -> AsyncGenerator[bytes, None]:
        body = await self._body(name)
        try:
            while piece := await asyncio.to_thread(body.read, _S3_PIECE_BYTES):
                yield piece
        finally:
            body.close()


def result_store(url: str, js: JetStreamContext) -> ResultStore:
    """The store ``url`` names: empty for the Object Store, ``s3://bucket[/prefix]`` for S3.

    Raises:
        ValueError: another scheme, or ``s3://`` without a bucket (the service does not start).
        ImportError: ``s3://`` without boto3 installed (the ``s3`` extra).
    """
    if not url:
        return NatsResults(js)
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(
            f"results_url {url!r} is neither empty (NATS Object Store) nor s3://<bucket>[/<prefix>]"
        )
    import boto3  # the s3 extra; only a service configured for S3 needs it

    return S3Results(parsed.netloc, parsed.path, boto3.client("s3"))
