"""Which models and versions should be loaded, and each model's default version, kept in NATS KV so
that it survives restarts and every replica agrees.

The bucket ``ferry_models`` holds what an admin changed at runtime; what was never touched follows
the models file and ``FERRY_INFERENCE_MODELS``:

* ``<model>/<version>``: ``loaded`` or ``unloaded``;
* ``<model>``: ``default=<version>``, the version calls naming none go to. (Before versions, this
  key held ``loaded``/``unloaded`` for the model's one version; such a value still means the
  model's default version.)

The replica that answers a LoadModel/UnloadModel/SetDefaultVersion writes the key once its own
change succeeded; every replica watches the bucket and converges to it (a load that fails there
leaves the version FAILED with the reason, as at start; a default moved to a version this replica
does not serve yet is loaded first). A starting replica reads the bucket first, so it does not load
what is meant to be unloaded and starts with the chosen default.

Off unless ``FERRY_INFERENCE_NATS_URL`` is set: inference then needs no NATS, as before.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from services.common import messaging
from services.common.errors import FerryError
from services.common.tasks import spawn
from services.inference.repository import ModelRepository, Recorder

log = logging.getLogger(__name__)

BUCKET = "ferry_models"
LOADED = b"loaded"
UNLOADED = b"unloaded"
DEFAULT = b"default="


async def open_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Opens the bucket, creating it with ``replicas`` copies when this is the first replica to need it."""
    return await messaging.open_key_value(js, BUCKET, replicas)


@dataclass
class Desired:
    """What the bucket says: versions to load (True) or not, by (model, version), and defaults.

    A version of ``""`` is the model's default version (a key from before versions).
    """

    loaded: dict[tuple[str, str], bool] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, value: bytes) -> None:
        """Reads one key of the bucket into these."""
        model, _, version = key.partition("/")
        if value.startswith(DEFAULT):
            self.defaults[model] = value.removeprefix(DEFAULT).decode()
        elif value in (LOADED, UNLOADED):
            self.loaded[(model, version)] = value == LOADED


class DesiredStates(Recorder):
    """Records an admin's changes in the bucket and applies the bucket's changes to the repository."""

    def __init__(self, kv: KeyValue, repository: ModelRepository) -> None:
        self._kv = kv
        self._repository = repository

    async def read(self) -> Desired:
        """What the bucket holds now; legacy keys (a model's one version) name its default version."""
        desired = Desired()
        try:
            names = await self._kv.keys()
        except NoKeysError:
            return desired
        for name in names:
            entry = await self._kv.get(name)
            if entry.value is not None:
                desired.add(name, entry.value)
        for model, version in [k for k in desired.loaded if not k[1]]:
            state = desired.loaded.pop((model, version))
            try:
                default = desired.defaults.get(model) or self._repository.default_version(model)
            except FerryError:  # a model no longer configured here
                continue
            desired.loaded.setdefault((model, default), state)
        return desired

    async def loaded(self, name: str, version: str, loaded: bool) -> None:
        """Keeps ``name`` at ``version`` loaded or not (after this replica applied it)."""
        await self._kv.put(f"{name}/{version}", LOADED if loaded else UNLOADED)

    async def default(self, name: str, version: str) -> None:
        """Keeps ``version`` as ``name``'s default (after this replica applied it)."""
        await self._kv.put(name, DEFAULT + version.encode())

    async def follow(self, stack: AsyncExitStack) -> None:
        """Applies every change of the bucket from now on, in a task that ``stack`` stops."""
        watcher = await self._kv.watchall()
        stack.push_async_callback(watcher.stop)
        spawn(stack, self._apply(watcher), name="model-states")

    async def _apply(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None or entry.value is None:  # the end of the initial values; a deletion
                continue
            model, _, version = entry.key.partition("/")
            try:
                if entry.value.startswith(DEFAULT):
                    default = entry.value.removeprefix(DEFAULT).decode()
                    await self._repository.set_default(model, default, load=True)
                elif entry.value == LOADED:
                    await self._repository.load(model, version)
                elif entry.value == UNLOADED:
                    await self._repository.unload(model, version)
            except FerryError as err:  # not configured here, or a load that failed: logged
                log.warning("model %s stays as it is on this replica: %s", entry.key, err.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("applying the desired state of model %s failed", entry.key)
