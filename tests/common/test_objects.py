"""services.common.objects.read, the jobs runner's whole-object read, on a real nats-server."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

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
