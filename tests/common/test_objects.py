"""services.common.objects: the jobs runner's whole-object read and a download's chunk by chunk one,
on a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig
from nats.js.errors import DigestMismatchError, ObjectNotFoundError
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
    """Consumers on the bucket's stream: the reads' own, while they read."""
    return (await bucket.js.stream_info(OBJ_STREAM_TEMPLATE.format(bucket=bucket.name))).state.consumer_count


async def test_chunks_are_pulled_a_batch_at_a_time_and_the_consumer_goes_with_the_read(
    bucket: Bucket,
) -> None:
    data = os.urandom(3 * 1024 * 1024)  # 24 chunks of 128 KiB
    await bucket.store.put("results.jsonl", data)
    read = objects.chunks(bucket.js, bucket.name, bucket.store, "results.jsonl", batch_bytes=256 * 1024)
    first = await anext(read)
    [consumer] = await bucket.js.consumers_info(OBJ_STREAM_TEMPLATE.format(bucket=bucket.name))
    # NATS sent what was asked (2 chunks), not what a push consumer's window lets it (16 or more).
    assert consumer.delivered.consumer_seq == 2 and consumer.num_pending == 22
    rest = [chunk async for chunk in read]
    assert b"".join([first, *rest]) == data and len(rest) == 23
    assert await consumers(bucket) == 0


async def test_a_read_stopped_early_deletes_its_consumer(bucket: Bucket) -> None:
    await bucket.store.put("results.jsonl", os.urandom(2 * 1024 * 1024))
    async with contextlib.aclosing(
        objects.chunks(bucket.js, bucket.name, bucket.store, "results.jsonl")
    ) as read:
        await anext(read)
        assert await consumers(bucket) == 1
    assert await consumers(bucket) == 0  # at once: NATS would remove it only after INACTIVE_S


async def test_a_read_whose_consumer_is_removed_goes_on_from_the_next_chunk(bucket: Bucket) -> None:
    data = os.urandom(2 * 1024 * 1024)
    await bucket.store.put("results.jsonl", data)
    read = objects.chunks(bucket.js, bucket.name, bucket.store, "results.jsonl", batch_bytes=256 * 1024)
    taken = [await anext(read) for _ in range(3)]
    # As NATS does when a reader paused longer than INACTIVE_S, or after a restart of NATS.
    stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket.name)
    [consumer] = await bucket.js.consumers_info(stream)
    await bucket.js.delete_consumer(stream, consumer.name)
    taken += [chunk async for chunk in read]
    assert b"".join(taken) == data
    assert await consumers(bucket) == 0


async def test_an_object_deleted_while_it_is_read_is_not_found(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "FETCH_TIMEOUT_S", 0.5)
    await bucket.store.put("results.jsonl", os.urandom(2 * 1024 * 1024))
    read = objects.chunks(bucket.js, bucket.name, bucket.store, "results.jsonl", batch_bytes=256 * 1024)
    await anext(read)
    await anext(read)
    await bucket.store.delete("results.jsonl")
    with pytest.raises(ObjectNotFoundError):
        async for _ in read:
            pass
    assert await consumers(bucket) == 0


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
