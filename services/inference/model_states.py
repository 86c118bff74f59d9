"""Which models should be loaded, kept in NATS KV so that it survives restarts and every replica agrees.

The bucket ``ferry_models`` holds one key per model that an admin loaded or unloaded at runtime,
valued ``loaded`` or ``unloaded``; models never touched follow ``FERRY_INFERENCE_MODELS``. The
replica that answers a LoadModel/UnloadModel writes the key once its own load or unload succeeded;
every replica watches the bucket and converges to it (a load that fails there leaves the model
FAILED with the reason, as at start). A starting replica reads the bucket first and does not load
what is meant to be unloaded.

Off unless ``FERRY_INFERENCE_NATS_URL`` is set: inference then needs no NATS, as before.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, BucketNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from services.common.errors import FerryError
from services.common.tasks import spawn
from services.inference.repository import ModelRepository

log = logging.getLogger(__name__)

BUCKET = "ferry_models"
LOADED = b"loaded"
UNLOADED = b"unloaded"


async def open_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Opens the bucket, creating it with ``replicas`` copies when this is the first replica to need it."""
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=BUCKET, replicas=replicas, history=1)
    except BadRequestError:  # another replica created it meanwhile
        return await js.key_value(BUCKET)


class DesiredStates:
    """Records the loaded set in the bucket and applies the bucket's changes to the repository."""

    def __init__(self, kv: KeyValue, repository: ModelRepository) -> None:
        self._kv = kv
        self._repository = repository

    async def read(self) -> dict[str, bool]:
        """The models an admin loaded (True) or unloaded (False), by name."""
        try:
            names = await self._kv.keys()
        except NoKeysError:
            return {}
        found = {}
        for name in names:
            entry = await self._kv.get(name)
            found[name] = entry.value == LOADED
        return found

    async def record(self, model: str, loaded: bool) -> None:
        """Keeps ``model``'s desired state (after this replica applied it)."""
        await self._kv.put(model, LOADED if loaded else UNLOADED)

    async def follow(self, stack: AsyncExitStack) -> None:
        """Applies every change of the bucket from now on, in a task that ``stack`` stops."""
        watcher = await self._kv.watchall()
        stack.push_async_callback(watcher.stop)
        spawn(stack, self._apply(watcher), name="model-states")

    async def _apply(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None or entry.value is None:  # the end of the initial values; a deletion
                continue
            try:
                if entry.value == LOADED:
                    await self._repository.load(entry.key)
                elif entry.value == UNLOADED:
                    await self._repository.unload(entry.key)
            except FerryError as err:  # not configured here, in use, or a load that failed: logged
                log.warning("model %s stays as it is on this replica: %s", entry.key, err.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("applying the desired state of model %s failed", entry.key)
