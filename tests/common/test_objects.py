"""services.common.objects: the jobs runner's whole-object read and a download's chunk by chunk one,
on a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import nats
import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig, RawStreamMsg
from nats.js.errors import DigestMismatchError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import OBJ_META_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE, ObjectStore

from services.common import objects
from services.common.messaging import connect


@dataclass
class Bucket:
    js: JetStreamContext
    name: str
    store: ObjectStore

    async def read(self, name: str) -> bytes:
        return await objects.read(self.js, self.name, self.store, name)


@pytest_asyncio.fixture
async def bucket(nats_url: str) -> AsyncIterator[Bucket]:
    async with AsyncExitStack() as stack:
        _, js = await connect(nats_url, "objects-tests", stack)
        name = f"objects-test-{uuid.uuid4().hex[:8]}"
        store = await js.create_object_store(name, config=ObjectStoreConfig(bucket=name))
        yield Bucket(js, name, store)
        await js.delete_object_store(name)


@pytest.mark.parametrize(
    ("size", "chunk"),
    [(0, None), (1, None), (128 * 1024, None), (1024 * 1024 + 7, None), (3_000_001, 64 * 1024)],
)
async def test_reads_what_was_put_whatever_its_size_and_chunks(
    bucket: Bucket, size: int, chunk: int | None
) -> None:
    data = os.urandom(size)
    meta = ObjectMeta(name="photo.jpg", options=ObjectMetaOptions(max_chunk_size=chunk)) if chunk else None
    await bucket.store.put("photo.jpg", data, meta=meta)

    assert await bucket.read("photo.jpg") == data


async def test_an_object_missing_or_deleted_is_not_found(bucket: Bucket) -> None:
    with pytest.raises(ObjectNotFoundError):
        await bucket.read("never-put")
    await bucket.store.put("gone", b"x" * 1000)
    await bucket.store.delete("gone")
    with pytest.raises(ObjectNotFoundError):
        await bucket.read("gone")


async def test_chunks_that_do_not_hash_to_the_recorded_digest_are_refused(bucket: Bucket) -> None:
    await bucket.store.put("a", b"a" * 300_000)
    await bucket.store.put("b", b"b" * 300_000)
    # b's info now records a's digest: its chunks no longer match it.
    subject = OBJ_META_PRE_TEMPLATE.format(bucket=bucket.name, obj=base64.urlsafe_b64encode(b"b").decode())
    stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket.name)
    info_b = json.loads((await bucket.js.get_last_msg(stream, subject)).data)
    info_a = await bucket.store.get_info("a")
    await bucket.js.publish(subject, json.dumps(info_b | {"digest": info_a.digest}).encode())

    with pytest.raises(DigestMismatchError):
        await bucket.read("b")


async def consumers(bucket: Bucket) -> int:
    """Consumers on the bucket's stream."""
    return (await bucket.js.stream_info(OBJ_STREAM_TEMPLATE.format(bucket=bucket.name))).state.consumer_count


@dataclass
class Gets:
    """The chunk gets a read made, by kind, with the chunk sequences they asked from."""

    direct: list[int]
    leader: list[int]


def count_gets(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch, lost: dict[int, type[Exception]] | None = None
) -> Gets:
    """Counts the read's gets; a direct get whose chunk is the n-th asked raises ``lost[n]`` (as a
    replica behind the leader, or a lost answer, would) instead of answering."""
    gets = Gets([], [])
    real = bucket.js.get_msg

    async def get_msg(
        stream: str, seq: int | None = None, subject: str = "", direct: bool = False, next: bool = False
    ) -> RawStreamMsg:
        if next:  # a chunk's get (an object's info is the last message on its meta subject)
            (gets.direct if direct else gets.leader).append(seq or 0)
            if direct and (error := (lost or {}).get(len(gets.direct))):
                raise error
        return await real(stream, seq=seq, subject=subject, direct=direct, next=next)

    monkeypatch.setattr(bucket.js, "get_msg", get_msg)
    return gets


async def test_a_read_asks_for_a_chunk_at_a_time_and_leaves_nothing_on_the_server(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * 1024 * 1024)  # 24 chunks of 128 KiB
    await bucket.store.put("results.jsonl", data)
    gets = count_gets(bucket, monkeypatch)
    read = objects.chunks(bucket.js, bucket.name, bucket.store, "results.jsonl")
    first = await anext(read)
    # NATS was asked for what the reader took, not for what a push consumer's window lets it send.
    assert len(gets.direct) == 1 and await consumers(bucket) == 0
    rest = [chunk async for chunk in read]
    assert b"".join([first, *rest]) == data and len(rest) == 23
    assert len(gets.direct) == 24 and gets.leader == [] and await consumers(bucket) == 0


@pytest.mark.parametrize("error", [NotFoundError, TimeoutError])
async def test_a_chunk_a_replica_did_not_give_is_asked_of_the_leader(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    await bucket.store.put("results.jsonl", data)
    gets = count_gets(bucket, monkeypatch, lost={3: error, 9: error})

    assert await bucket.read("results.jsonl") == data
    assert len(gets.direct) == 16 and gets.leader == [gets.direct[2], gets.direct[8]]


async def test_an_object_deleted_while_it_is_read_is_not_found(bucket: Bucket) -> None:
    await bucket.store.put("results.jsonl", os.urandom(2 * 1024 * 1024))
    read = objects.chunks(bucket.js, bucket.name, bucket.store, "results.jsonl")
    await anext(read)
    await anext(read)
    await bucket.store.delete("results.jsonl")
    with pytest.raises(ObjectNotFoundError):
        async for _ in read:
            pass


async def test_large_objects_read_at_once_on_one_connection_keep_it(bucket: Bucket, nats_url: str) -> None:
    # Read through ordered push consumers, each with a flow-control window of up to 32 MiB, 8 reads
    # of a 32 MiB object had more than nats-server holds for a connection (64 MiB) on their way:
    # it closed the connection as a slow consumer (session 10's downloads that timed out).
    data = os.urandom(32 * 1024 * 1024)
    await bucket.store.put("results.jsonl", data)
    disconnections = 0

    async def disconnected() -> None:
        nonlocal disconnections
        disconnections += 1

    nc = await nats.connect(nats_url, disconnected_cb=disconnected)
    js = nc.jetstream()
    store = await js.object_store(bucket.name)

    async def digest() -> bytes:
        hashed = hashlib.sha256()
        async for chunk in objects.chunks(js, bucket.name, store, "results.jsonl"):
            hashed.update(chunk)
        return hashed.digest()

    try:
        digests = await asyncio.gather(*(digest() for _ in range(8)))
        assert digests == [hashlib.sha256(data).digest()] * 8
        assert disconnections == 0
    finally:
        await nc.close()


async def _pieces(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _messages(bucket: Bucket) -> int:
    info = await bucket.js.stream_info(OBJ_STREAM_TEMPLATE.format(bucket=bucket.name))
    return info.state.messages


async def test_a_new_name_put_without_asking_first_is_stored(bucket: Bucket) -> None:
    data = os.urandom(300_000)  # three chunks

    info = await objects.put(bucket.js, bucket.name, "line-1", _pieces(data), replace=False)

    assert info is not None and info.size == len(data)
    assert await bucket.read("line-1") == data
    assert await _messages(bucket) == 4  # three chunks and the meta message


async def test_a_name_taken_is_kept_when_put_without_replacing_and_the_chunks_sent_are_deleted(
    bucket: Bucket,
) -> None:
    # The expander's inline images: a redelivered expansion stores each again without asking; the
    # one stored first stays (a reader may be reading it) and the copy leaves nothing behind.
    first = await objects.put(bucket.js, bucket.name, "line-1", _pieces(b"first"), replace=False)
    messages = await _messages(bucket)

    again = await objects.put(bucket.js, bucket.name, "line-1", _pieces(b"second" * 50_000), replace=False)

    assert first is not None and again is None
    assert await bucket.read("line-1") == b"first"
    assert await _messages(bucket) == messages
