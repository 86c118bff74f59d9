"""Reading a whole Object Store object in time linear in its size.

nats.py's ``ObjectStore.get`` appends each chunk to one bytes object (``data += chunk``), so every
chunk copies all those before it: for a 9.7 MB photo in 128 KB chunks that is 370 MB of copies,
83 ms of CPU and fresh pages from the kernel for each, where joining the chunks once costs 1.3 ms
(a 1 MB photo: 1.0 against 0.15 ms). The jobs runner reads each item's image so, at the normal
priority, while other tenants' calls wait for a core, and the gateway a finished job's result file
(10,000 lines: megabytes) on its event loop (docs/benchmarks.md, session 10). ``read``
follows the same protocol as ``get`` (the object's info, then its chunks through an ordered
consumer, then the SHA-256 digest checked) and joins the chunks once.
"""

from __future__ import annotations

import base64
import hashlib

from nats.js import JetStreamContext
from nats.js.errors import DigestMismatchError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_DIGEST_TYPE, ObjectStore


async def read(js: JetStreamContext, bucket: str, store: ObjectStore, name: str) -> bytes:
    """Object ``name`` of ``store`` (the Object Store ``bucket``), whole.

    Raises:
        nats.js.errors.ObjectNotFoundError: no such object (or it was deleted).
        nats.js.errors.DigestMismatchError: its chunks do not hash to its recorded digest.
    """
    info = await store.get_info(name)
    if info.is_link():  # Ferry makes no links; read one as nats.py would
        return (await store.get(name)).data or b""
    if not info.size:
        return b""
    chunks: list[bytes] = []
    digest = hashlib.sha256()
    sub = await js.subscribe(
        OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=info.nuid), ordered_consumer=True
    )
    try:
        async for msg in sub.messages:
            chunks.append(msg.data)
            digest.update(msg.data)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    recorded = (info.digest or "").removeprefix(OBJ_DIGEST_TYPE).removeprefix(OBJ_DIGEST_TYPE.upper())
    if digest.digest() != base64.urlsafe_b64decode(recorded):
        raise DigestMismatchError
    return b"".join(chunks)
