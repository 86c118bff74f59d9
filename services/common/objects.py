"""Reading and writing Object Store objects in bounded memory, paced by the reader (or the writer's
source).

nats.py's ``ObjectStore.get`` appends each chunk to one bytes object (``data += chunk``), so every
chunk copies all those before it: for a 9.7 MB photo in 128 KB chunks that is 370 MB of copies
(docs/benchmarks.md, session 10). ``read`` joins the chunks once; ``chunks`` hands them on as they
come, for a reader that streams them (a result file of 10,000 lines at top_k 100 is about 55 MB).

Both read an object's chunks one at a time, each asked of NATS when the reader has taken the one
before: a JetStream *direct get* of the next message on the object's chunk subject from the
sequence after the last chunk read (``next_by_subj``), so what a reader has on its way is a chunk,
and nothing is left on the server when a read ends, however it ends. nats.py's ``get`` (and
session 10's streamed read) used an ordered *push* consumer: NATS sends its chunks without being
asked, up to a flow-control window that doubles to 32 MiB each time the client answers. Several
slow readers on one connection (8 downloads of a 55 MB file in one gateway) so had up to 8 x 32 MiB
on their way: the client's read loop fell behind, nats-server's buffer for the connection passed
its limit and it closed the connection as a slow consumer, and requests waiting behind those bytes
timed out (docs/benchmarks.md, session 11). Sessions 11-14 read through a pull consumer of each
read's own: creating, pulling from and deleting it took three round trips beside the object's
info for a one-chunk photo where a direct get takes one, and direct gets cost nats-server about
a fifth less CPU per MB read (``python -m benchmarks.object_reads``, docs/benchmarks.md, session
15).

A stream with replicas lets any of them answer a direct get, and one behind the leader may not
have an object's chunks yet (the object's info comes from the leader): a chunk it does not find,
or an answer that did not come, is asked of the leader (``STREAM.MSG.GET``) before the read gives
up. The object's SHA-256 digest is checked after its last chunk, as ``get`` does.

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
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterable
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import Header, ObjectInfo, ObjectMetaOptions, RawStreamMsg
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

# JetStream's answers to a publish whose expected last subject sequence is not the subject's last.
_WRONG_LAST_SEQUENCE = (10071, 10164)

# What a direct get raises when the replica that answered has no such chunk, or no answer came
# (asyncio's and nats.py's timeouts are TimeoutError): the leader is asked then.
_LOST = (ServiceUnavailableError, NotFoundError, TimeoutError, nats.errors.NoRespondersError)


async def read(js: JetStreamContext, bucket: str, store: ObjectStore, name: str) -> bytes:
    """Object ``name`` of ``store`` (the Object Store ``bucket``), whole.

    Raises:
        nats.js.errors.ObjectNotFoundError: no such object (or it was deleted).
        nats.js.errors.DigestMismatchError: its chunks do not hash to its recorded digest.
    """
    return b"".join([chunk async for chunk in chunks(js, bucket, store, name)])


async def chunks(
    js: JetStreamContext, bucket: str, store: ObjectStore, name: str
) -> AsyncGenerator[bytes, None]:
    """Object ``name``'s chunks, each asked of NATS once the reader has taken the one before.

    The digest is checked after the last chunk: a reader that acts on chunks before then learns of
    a mismatch at the end. A reader that stops early just stops: nothing is left to delete.

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
    stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
    subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=info.nuid)
    after = 0  # the stream sequence of the last chunk read
    try:
        for _ in range(info.chunks):
            chunk = await _next_chunk(js, stream, subject, after + 1)
            after = chunk.seq or after + 1
            digest.update(chunk.data or b"")
            yield chunk.data or b""
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


async def _next_chunk(js: JetStreamContext, stream: str, subject: str, seq: int) -> RawStreamMsg:
    """The first message on ``subject`` at stream sequence ``seq`` or after it: asked of any replica
    (a direct get), then of the leader if that one had none or did not answer.

    Raises:
        NotFoundError: the leader has none either (the object was deleted meanwhile).
    """
    try:
        return await js.get_msg(stream, seq=seq, subject=subject, next=True, direct=True)
    except _LOST:
        return await js.get_msg(stream, seq=seq, subject=subject, next=True)
