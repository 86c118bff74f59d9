"""The model repository at runtime: load and unload configured models without a restart.

Every configured model (``FERRY_INFERENCE_MODELS`` and the models they need) is known from start;
each one that serves owns an ``AsyncExitStack`` of its own (its batcher's threads and tasks), so it
can be stopped alone. ``models``, the mapping the servicer reads, is only ever assigned whole
entries, so a call sees either the old model or the new one:

* load: the entry turns LOADING, the model is built and warmed up in threads (the loop keeps
  serving every other model), then the entry becomes the served model; a load that fails leaves
  the entry FAILED with the reason, and the others serving;
* unload: the entry turns UNLOADED first (new calls answer MODEL_NOT_LOADED), the calls already
  queued are given ``drain_s`` to finish, then the model's stack is closed and its memory given
  back (a garbage collection, then glibc's ``malloc_trim`` so freed arenas leave the process).

A model a loaded ensemble calls cannot be unloaded before the ensemble (MODEL_IN_USE).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack

from services.common.errors import FailedPrecondition, NotFound
from services.inference.models.config import ModelConfig
from services.inference.served import FAILED, LOADING, UNLOADED, Served, ServedModel, Unserved

log = logging.getLogger(__name__)

#: Builds a model to serve; what it starts goes on the stack it is given.
Builder = Callable[[ModelConfig, AsyncExitStack], Awaitable[Served]]
#: Keeps a model's desired state (loaded or not) where every replica sees it (``model_states``).
Recorder = Callable[[str, bool], Awaitable[None]]


def give_memory_back() -> None:
    """Collects garbage and returns freed heap pages to the OS (glibc only; elsewhere a no-op)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class ModelRepository:
    """Loads and unloads the configured models of one inference process (see the module)."""

    def __init__(
        self, configs: list[ModelConfig], models: MutableMapping[str, Served], drain_s: float = 10.0
    ) -> None:
        self._configs = {c.name: c for c in configs}
        self._models = models
        self._drain_s = drain_s
        self._stacks: dict[str, AsyncExitStack] = {}
        self._locks: dict[str, asyncio.Lock] = {name: asyncio.Lock() for name in self._configs}
        self._build: Builder | None = None
        self._record: Recorder | None = None

    def attach(self, build: Builder, record: Recorder | None = None) -> None:
        """Sets how models are built (the service's loader, once its shared parts have started) and,
        optionally, where an admin's loads and unloads are kept (``record=True`` calls)."""
        self._build = build
        self._record = record

    def config(self, name: str) -> ModelConfig:
        """A configured model's settings.

        Raises:
            NotFound: MODEL_NOT_FOUND, naming the configured models.
        """
        found = self._configs.get(name.removeprefix("models/"))
        if found is None:
            raise NotFound(
                f"model {name!r} is not configured here; configured: {', '.join(sorted(self._configs))} "
                "(FERRY_INFERENCE_MODELS)",
                "MODEL_NOT_FOUND",
                {"model": name},
            )
        return found

    async def load(self, name: str, record: bool = False) -> Served:
        """Loads ``name`` unless it serves already; returns it serving. ``record``: an admin asked,
        so the desired state is kept once the load succeeded.

        Raises:
            NotFound: not a configured model.
            FailedPrecondition: MODEL_LOAD_FAILED with the reason (the model is left FAILED).
        """
        config = self.config(name)
        async with self._locks[config.name]:
            current = self._models.get(config.name)
            if current is not None and not isinstance(current, Unserved):
                await self._keep(config.name, True, record)
                return current
            if self._build is None:
                raise RuntimeError("the repository loads models once the service has started")
            self._models[config.name] = Unserved(config, LOADING)
            stack, started = AsyncExitStack(), time.perf_counter()
            try:
                served = await self._build(config, stack)
            except Exception as err:
                await stack.aclose()
                log.error("model %s failed to load: %s", config.name, err, exc_info=True)
                self._models[config.name] = Unserved(config, FAILED, str(err))
                raise FailedPrecondition(
                    f"model {config.name!r} failed to load: {err}; the other models still serve",
                    "MODEL_LOAD_FAILED",
                    {"model": config.name},
                ) from None
            self._stacks[config.name] = stack
            self._models[config.name] = served
            log.info("loaded %s in %.1f s", config.name, time.perf_counter() - started)
            await self._keep(config.name, True, record)
            return served

    async def _keep(self, name: str, loaded: bool, record: bool) -> None:
        if record and self._record is not None:
            await self._record(name, loaded)

    async def unload(self, name: str, record: bool = False) -> Served:
        """Stops serving ``name`` and gives its memory back; returns its UNLOADED entry. ``record``:
        an admin asked, so the desired state is kept.

        Raises:
            NotFound: not a configured model.
            FailedPrecondition: MODEL_IN_USE, when a loaded ensemble calls it.
        """
        config = self.config(name)
        users = [
            c.name
            for c in self._configs.values()
            if config.name in (*c.members, *c.requires) and not isinstance(self._models.get(c.name), Unserved)
        ]
        if users:
            raise FailedPrecondition(
                f"model {config.name!r} is called by the loaded ensemble(s) {', '.join(users)}; "
                "unload them first",
                "MODEL_IN_USE",
                {"model": config.name, "ensembles": ",".join(users)},
            )
        async with self._locks[config.name]:
            current = self._models.get(config.name)
            if isinstance(current, Unserved) and current.state == UNLOADED:
                await self._keep(config.name, False, record)
                return current
            unloaded = Unserved(config, UNLOADED, "unloaded by an admin; load it again to serve it")
            self._models[config.name] = unloaded  # new calls are refused from here on
            if isinstance(current, ServedModel):
                await self._drain(current)
            stack = self._stacks.pop(config.name, None)
            del current
            if stack is not None:
                await stack.aclose()
            await asyncio.to_thread(give_memory_back)
            log.info("unloaded %s", config.name)
            await self._keep(config.name, False, record)
            return unloaded

    async def _drain(self, served: ServedModel) -> None:
        """Waits (at most ``drain_s``) for the calls already queued to be answered."""
        deadline = time.monotonic() + self._drain_s
        # Polled: the batcher signals no event when its queue empties, and unloading is rare.
        while served.batcher.queued and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stops every model still serving (at shutdown)."""
        for name in list(self._stacks):
            await self._stacks.pop(name).aclose()
