"""A manifest's inline images being stored (services/jobs/manifests.py): when a later line fails the
check, and when the manifest is checked again."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import tempfile
import uuid
import warnings

from nats.js import JetStreamContext
from nats.js.object_store import OBJ_STREAM_TEMPLATE

from ferry.events.v1 import events_pb2
from services.common import objects
from services.common.fetcher import Fetcher, FetchPolicy
from services.common.upload_store import BUCKET, JSONL, Index, UploadStore
from services.jobs.manifests import Manifest, _Stores


def test_a_store_cancelled_before_it_ran_leaves_no_coroutine_unawaited() -> None:
    # A manifest whose line 1 is an inline image and line 2 a bad "id": the check stops at line 2
    # and cancels line 1's store, which had not run yet. It used to print "coroutine
    # 'Manifest._store' was never awaited" to the jobs service's log (a RuntimeWarning, no JSON).
    ran: list[str] = []

    async def store() -> None:
        ran.append("stored")

    async def check() -> None:
        stores = _Stores(2)
        await stores.start(store())
        stores.cancel()
        await asyncio.sleep(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(check())
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert ran == []


def test_stores_run_and_free_their_slots() -> None:
    async def check() -> list[int]:
        stores = _Stores(1)
        done: list[int] = []

        async def store(n: int) -> None:
            await asyncio.sleep(0)
            done.append(n)

        for n in range(3):
            await stores.start(store(n))  # one slot: waits for the one before
        await stores.wait()
        return done

    assert asyncio.run(check()) == [0, 1, 2]


async def _check(uploads: UploadStore, index: Index, manifest: bytes) -> None:
    async def progress(_: int) -> None:
        return None

    expansion = events_pb2.JobExpansion(
        manifest=f"uploads/{index.upload_id}", max_item_bytes=2**20, max_image_bytes=2**20
    )
    with tempfile.TemporaryFile() as spooled:
        spooled.write(manifest)
        manifest_of = Manifest(uploads, index, spooled, Fetcher(FetchPolicy(2**20)), expansion)
        kinds = await manifest_of.check(2, progress)
    assert kinds == {"image"}


async def _messages(js: JetStreamContext) -> int:
    return (await js.stream_info(OBJ_STREAM_TEMPLATE.format(bucket=BUCKET))).state.messages


async def test_inline_images_are_stored_once_however_often_their_manifest_is_checked(
    js: JetStreamContext,
) -> None:
    # The first check stores each image without asking first; a redelivered expansion (or a second
    # job naming the manifest) finds them and leaves each object as it was, with nothing left over.
    images = [os.urandom(1000 + n) for n in range(5)]
    manifest = b"".join(b'{"content": "%s"}\n' % base64.b64encode(image) for image in images)
    index = Index(uuid.uuid4(), "tenant-a", JSONL, len(manifest), [], lines=len(images))
    uploads = UploadStore(js, 2**30, 1)
    store = await uploads.store()
    await uploads.store_new(f"tenant-a/{index.upload_id}/line-3", images[2])  # a redelivery's head start
    before = await _messages(js)

    await _check(uploads, index, manifest)
    stored = await _messages(js)
    await _check(uploads, index, manifest)

    assert stored - before == 2 * 4  # a chunk and a meta message for each image not stored yet
    assert await _messages(js) == stored
    for number, image in enumerate(images, 1):
        name = f"tenant-a/{index.upload_id}/line-{number}"
        assert await objects.read(js, BUCKET, store, name) == image
