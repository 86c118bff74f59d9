"""Reading and writing Object Store objects in bounded memory, paced by the reader (or the writer's
source).

nats.py's ``ObjectStore.get`` appends each chunk to one bytes object (``data += chunk``), so every
chunk copies all those before it: for a 9.7 MB photo in 128 KB chunks that is 370 MB of copies
(docs/benchmarks.md, session 10). ``read`` joins the chunks once; ``chunks`` hands them on as they
come, for a reader that streams them (a result file of 10,000 lines at top_k 100 is about 55 MB).

Both read an object's chunks through a **pull** consumer of their own that asks NATS for at most
``batch_bytes`` of chunks at a time, and only when the reader has taken the last batch. nats.py's
``get`` (and session 10's streamed read) used an ordered *push* consumer: NATS sends its chunks
without being asked, up to a flow-control window that doubles to 32 MiB each time the client
answers. Several slow readers on one connection (8 downloads of a 55 MB file in one gateway) so
had up to 8 x 32 MiB on their way: the client's read loop fell behind, nats-server's buffer for the
connection passed its limit and it closed the connection as a slow consumer, and requests waiting
behind those bytes timed out (docs/benchmarks.md, session 11). With pulls, what a connection has on
its way is at most a batch per reader.

Each read deletes its consumer when it ends, however it ends (taken whole, failed, or abandoned by
a reader that stopped and closed the iterator); one left behind (the process died) is removed by
NATS once it has had no pull for ``INACTIVE_S``. A consumer that NATS removed while its reader paused
longer than that, or lost deliveries (a reconnection), is replaced by one that starts at the next
chunk. The object's SHA-256 digest is checked after its last chunk, as ``get`` does.

``put`` writes an object from pieces as its source makes them (a result file's lines, page after
page of store's records), where nats.py's ``put`` wants bytes or a file: the pieces go out as
chunks on a subject of their own, the digest is computed as they go, and the object exists only
once its meta message is published after the last chunk, so no reader ever sees part of it. That
meta message is published only if no other writer published one for the name since this one
began (``Nats-Expected-Last-Subject-Sequence``): of two writers at once the first to finish wins,
and the other deletes its own chunks, which nobody could have read. A write that fails midway
deletes its chunks too (or, if NATS is gone, leaves chunks without a meta message: no object, and
the bucket's age limit removes them).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterable
from datetime import UTC, datetime

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header, ObjectInfo, ObjectMetaOptions
from nats.js.errors import APIError, DigestMismatchError, NotFoundError, ServiceUnavailableError
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DEFAULT_CHUNK_SIZE,
    OBJ_DIGEST_TEMPLATE,
    OBJ_DIGEST_TYPE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)
from nats.nuid import NUID

log = logging.getLogger(__name__)

#: Bytes of chunks one read asks NATS for at a time (at least one chunk): what it holds at most.
BATCH_BYTES = 1024 * 1024
#: Seconds without a pull after which NATS removes a read's consumer (one its reader left behind).
INACTIVE_S = 30.0
#: Seconds a pull waits for its chunks.
FETCH_TIMEOUT_S = 10.0

# JetStream's answers to a publish whose expected last subject sequence is not the subject's last.
_WRONG_LAST_SEQUENCE = (10071, 10164)

# What a pull raises when its consumer is gone or its answer did not come (asyncio's and nats.py's
# timeouts are TimeoutError): the read goes on with a new consumer from the next chunk, as long as
# the consumer it replaces had delivered something.
_LOST = (ServiceUnavailableError, NotFoundError, TimeoutError, nats.errors.NoRespondersError)


async def read(js: JetStreamContext, bucket: str, store: ObjectStore, name: str) -> bytes:
    """Object ``name`` of ``store`` (the Object Store ``bucket``), whole.

    Raises:
        nats.js.errors.ObjectNotFoundError: no such object (or it was deleted).
        nats.js.errors.DigestMismatchError: its chunks do not hash to its recorded digest.
    """
    return b"".join([chunk async for chunk in chunks(js, bucket, store, name)])


async def chunks(
    js: JetStreamContext, bucket: str, store: ObjectStore, name: str, batch_bytes: int = BATCH_BYTES
) -> AsyncGenerator[bytes, None]:
    """Object ``name``'s chunks, asked of NATS ``batch_bytes`` at a time as the reader takes them.

    The digest is checked after the last chunk: a reader that acts on chunks before then learns of
    a mismatch at the end. Close the iterator (``contextlib.aclosing``) when stopping early, so its
    consumer is deleted at once rather than when the iterator is collected.

    Raises:
        nats.js.errors.ObjectNotFoundError: no such object (or it was deleted).
        nats.js.errors.DigestMismatchError: its chunks do not hash to its recorded digest.
    """
    info = await store.get_info(name)
    if info.is_link():  # Ferry makes no links; read one as nats.py would
        yield (await store.get(name)).data or b""
        return
    if not info.size or not info.chunks:
        return
    digest = hashlib.sha256()
    try:
        async with contextlib.aclosing(_pulled(js, bucket, info, batch_bytes)) as pulled:
            async for chunk in pulled:
                digest.update(chunk)
                yield chunk
    except _LOST:
        await store.get_info(name)  # ObjectNotFoundError if it was deleted meanwhile
        raise
    recorded = (info.digest or "").removeprefix(OBJ_DIGEST_TYPE).removeprefix(OBJ_DIGEST_TYPE.upper())
    if digest.digest() != base64.urlsafe_b64decode(recorded):
        raise DigestMismatchError


async def put(
    js: JetStreamContext,
    bucket: str,
    name: str,
    pieces: AsyncIterable[bytes | bytearray],
    chunk_bytes: int = OBJ_DEFAULT_CHUNK_SIZE,
    replace: bool = True,
) -> ObjectInfo | None:
    """Stores the ``pieces`` as object ``name`` of the Object Store ``bucket``, sent as they come in
    chunks of ``chunk_bytes``; holds a piece at a time. The object is seen by readers only once
    whole; one stored before under the name is replaced (and its chunks deleted), or with
    ``replace=False`` kept: then nothing is asked before the chunks go (one round trip less, for a
    writer that expects the name to be new), and a name already taken costs the chunks' deletion.

    Returns:
        The object's info, or None when another writer stored ``name`` while this one wrote (or,
        with ``replace=False``, before): its object is kept and this one's chunks are deleted.

    Raises:
        Whatever the pieces or NATS raised: no object was stored, and the chunks sent are deleted.
    """
    stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
    meta = OBJ_META_PRE_TEMPLATE.format(bucket=bucket, obj=base64.urlsafe_b64encode(name.encode()).decode())
    before, after = None, 0  # with replace=False: stored only if the name has no meta message yet
    try:
        if replace:
            last = await js.get_last_msg(stream, meta)
            before, after = ObjectInfo.from_response(json.loads(last.data or b"{}")), last.seq or 0
    except NotFoundError:
        pass
    nuid = NUID().next().decode()
    chunks = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=nuid)
    digest = hashlib.sha256()
    size = count = 0
    try:
        async for piece in pieces:
            view = memoryview(piece)
            for start in range(0, len(view), chunk_bytes):
                chunk = view[start : start + chunk_bytes]
                digest.update(chunk)
                await js.publish(chunks, chunk.tobytes())
                size, count = size + len(chunk), count + 1
        info = ObjectInfo(
            name=name,
            bucket=bucket,
            nuid=nuid,
            size=size,
            chunks=count,
            mtime=datetime.now(UTC).isoformat(),
            digest=OBJ_DIGEST_TEMPLATE.format(digest=base64.urlsafe_b64encode(digest.digest()).decode()),
            options=ObjectMetaOptions(max_chunk_size=chunk_bytes),
        )
        headers = {Header.ROLLUP.value: "sub", Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(after)}
        await js.publish(meta, json.dumps(info.as_dict()).encode(), headers=headers)
    except APIError as err:
        await _purge(js, stream, chunks)
        if err.err_code in _WRONG_LAST_SEQUENCE:
            log.info("object %s/%s was stored by another writer meanwhile; kept it", bucket, name)
            return None
        raise
    except BaseException:  # cancelled too: chunks without a meta message are no object, but take room
        await _purge(js, stream, chunks)
        raise
    if before is not None and not before.deleted and before.nuid:
        await _purge(js, stream, OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=before.nuid))
    return info


async def _purge(js: JetStreamContext, stream: str, subject: str) -> None:
    """Deletes the messages of ``subject``; a failure is logged (the bucket's age limit removes them)."""
    try:
        await js.purge_stream(stream, subject=subject)
    except Exception as err:  # must not hide why the write ended
        log.warning("could not delete the chunks %s: %s", subject, err)


async def _pulled(
    js: JetStreamContext, bucket: str, info: ObjectInfo, batch_bytes: int
) -> AsyncGenerator[bytes, None]:
    """The object's chunks in order, pulled ``batch_bytes`` at a time, through a consumer of its own
    (replaced by one from the next chunk when it is lost), deleted when this ends however it ends."""
    size, count = info.size or 0, info.chunks or 0
    stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
    subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=info.nuid)
    per_pull = max(1, batch_bytes * count // max(size, 1))
    left, start = count, 1
    reader: _Reader | None = None
    try:
        while left:
            if reader is None:
                reader = await _Reader.open(js, stream, subject, start)
            try:
                batch = await reader.pull(min(per_pull, left))
            except _LOST:
                if not reader.delivered:
                    raise  # a new consumer got nothing either: the chunks are gone or NATS is
                await reader.close()
                reader = None
                continue
            for msg in batch:
                left -= 1
                start = msg.metadata.sequence.stream + 1
                yield msg.data
            if reader.skipped:
                await reader.close()
                reader = None
    finally:
        if reader is not None:
            await reader.close()


class _Reader:
    """One pull consumer of an object's chunks from stream sequence ``start``, and its inbox."""

    def __init__(
        self, js: JetStreamContext, stream: str, sub: JetStreamContext.PullSubscription, name: str
    ) -> None:
        self._js, self._stream, self._sub, self._name = js, stream, sub, name
        self.delivered = 0
        """Chunks this consumer has delivered in order."""
        self.skipped = False
        """Whether a delivery was missing (lost in a reconnection): the rest of its batch was dropped."""

    @classmethod
    async def open(cls, js: JetStreamContext, stream: str, subject: str, start: int) -> _Reader:
        name = f"ferry-read-{uuid.uuid4().hex}"
        config = ConsumerConfig(
            name=name,
            filter_subject=subject,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,  # nothing is redelivered: a lost chunk is asked again
            inactive_threshold=INACTIVE_S,
            num_replicas=1,
            mem_storage=True,
        )
        await js.add_consumer(stream, config)
        return cls(js, stream, await js.pull_subscribe_bind(consumer=name, stream=stream), name)

    async def pull(self, count: int) -> list[Msg]:
        """The next ``count`` chunks (fewer when a delivery was missing: ``skipped``)."""
        batch = await self._sub.fetch(count, timeout=FETCH_TIMEOUT_S)
        for i, msg in enumerate(batch):
            if msg.metadata.sequence.consumer != self.delivered + 1:
                self.skipped = True
                return batch[:i]
            self.delivered += 1
        return batch

    async def close(self) -> None:
        """Unsubscribes and deletes the consumer; a failure is left to NATS's inactivity removal."""
        try:
            await self._sub.unsubscribe()
            await self._js.delete_consumer(self._stream, self._name)
        except Exception as err:  # closing must not hide why the read ended
            log.debug("could not delete the read consumer %s: %s", self._name, err)
