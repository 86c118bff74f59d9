"""The model repository at runtime: load and unload configured models and their versions, and move a
model's default version, without a restart.

Every configured version of every configured model (``FERRY_INFERENCE_MODELS``, the models they
need, the ``versions`` of their tables) is known from start; each version that serves owns an
``AsyncExitStack`` of its own (its batcher's threads and tasks), so it can be stopped alone.
``models``, the mapping the servicer, the hub and the ensembles read, holds each model's *default*
version and is only ever assigned whole entries, so a call sees either the old entry or the new:

* load: the version's entry turns LOADING, it is built and warmed up in threads (the loop keeps
  serving every other model), then the entry becomes the served version; a load that fails leaves
  it FAILED with the reason, and the others serving;
* unload: the entry turns UNLOADED first (new calls answer MODEL_NOT_LOADED), the calls already
  queued are given ``drain_s`` to finish, then its stack is closed and its memory given back (a
  garbage collection, then glibc's ``malloc_trim`` so freed arenas leave the process). Ensembles
  and notebooks that call it stay loaded and answer MODEL_NOT_LOADED naming it (their state turns
  UNAVAILABLE) until it is loaded again;
* default: one assignment of ``models[name]`` to another loaded version. A call takes its entry
  once, when it starts, so the calls already running finish on the old version and no call fails.
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

from ferry.models.v1 import model_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.inference.models.config import ModelConfig
from services.inference.served import FAILED, LOADING, READY, UNLOADED, Served, ServedModel, Unserved

log = logging.getLogger(__name__)

#: Builds a model to serve; what it starts goes on the stack it is given.
Builder = Callable[[ModelConfig, AsyncExitStack], Awaitable[Served]]


class Recorder:
    """Keeps an admin's changes where every replica sees them (``model_states``); here: nowhere."""

    async def loaded(self, name: str, version: str, loaded: bool) -> None:
        """``name`` at ``version`` should be loaded (True) or not."""

    async def default(self, name: str, version: str) -> None:
        """``version`` is ``name``'s default."""


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
    """Loads and unloads the configured models' versions in one inference process (see the module).

    Args:
        configs: Every version of every model; a model's first one is its default at start.
        models: The mapping to keep: each model's default version, by name (filled in here).
        drain_s: How long an unload waits for the calls already queued.
    """

    def __init__(
        self, configs: list[ModelConfig], models: MutableMapping[str, Served], drain_s: float = 10.0
    ) -> None:
        self._configs: dict[str, dict[str, ModelConfig]] = {}
        for c in configs:
            self._configs.setdefault(c.name, {})[c.version] = c
        self._defaults = {name: next(iter(versions)) for name, versions in self._configs.items()}
        self._versions: dict[str, dict[str, Served]] = {
            name: {v: Unserved(c, LOADING) for v, c in versions.items()}
            for name, versions in self._configs.items()
        }
        self._models = models
        for name in self._configs:
            self._publish(name)
        self._drain_s = drain_s
        self._stacks: dict[tuple[str, str], AsyncExitStack] = {}
        self._locks = {(c.name, c.version): asyncio.Lock() for c in configs}
        self._build: Builder | None = None
        self._record = Recorder()
        self.started = False
        """Whether the service's start has loaded (or unloaded) every model it starts with: until
        then an admin's load, unload or default move would race with it, and is turned away."""

    def attach(self, build: Builder, record: Recorder | None = None) -> None:
        """Sets how models are built (the service's loader, once its shared parts have started) and,
        optionally, where an admin's changes are kept (calls with ``record=True``)."""
        self._build = build
        self._record = record or Recorder()

    def _publish(self, name: str) -> None:
        self._models[name] = self._versions[name][self._defaults[name]]

    def config(self, name: str, version: str = "") -> ModelConfig:
        """A configured model's settings, of ``version`` (empty: the default version).

        Raises:
            NotFound: MODEL_NOT_FOUND naming the configured models, or MODEL_VERSION_NOT_FOUND
                naming the model's versions.
        """
        model = name.removeprefix("models/")
        versions = self._configs.get(model)
        if versions is None:
            raise NotFound(
                f"model {name!r} is not configured here; available: {', '.join(sorted(self._configs))} "
                "(FERRY_INFERENCE_MODELS)",
                "MODEL_NOT_FOUND",
                {"model": name},
            )
        found = versions.get(version or self._defaults[model])
        if found is None:
            raise NotFound(
                f"model {model!r} has no version {version!r}; its versions: {', '.join(versions)} "
                "(the models file's [models.<id>.versions.<v>] tables)",
                "MODEL_VERSION_NOT_FOUND",
                {"model": model, "version": version},
            )
        return found

    def served(self, name: str, version: str = "") -> Served:
        """The entry a call to ``name`` (at ``version``; empty: the default) goes to.

        Raises:
            NotFound: an unknown model or version.
            FerryError: the version, or a model it calls, is not serving (MODEL_NOT_LOADED, ...).
        """
        config = self.config(name, version)
        entry = self._models[config.name] if not version else self._versions[config.name][config.version]
        if isinstance(entry, Unserved):
            raise entry.unavailable()
        for needed in self._needs(config):
            member = self._models[needed]
            if isinstance(member, Unserved):
                error = member.unavailable()
                error.message = f"model {config.name!r} calls {needed!r}: {error.message}"
                error.metadata["caller"] = config.name
                raise error
        return entry

    def _needs(self, config: ModelConfig) -> tuple[str, ...]:
        return tuple(m for m in (*config.members, *config.requires) if m in self._models)

    def describe(self, name: str) -> model_pb2.Model:
        """``name`` as its default version describes it, with every version's state; a model whose
        members or required models are not serving is UNAVAILABLE, naming them."""
        model = self._models[name].describe()
        model.default_version = self._defaults[name]
        for version, entry in self._versions[name].items():
            state = entry.describe()
            model.versions.add(version=version, state=state.state, state_message=state.state_message)
        missing = [m for m in self._needs(self._configs[name][self._defaults[name]]) if not self._ready(m)]
        if missing and model.state in (READY, model_pb2.MODEL_STATE_UNAVAILABLE):
            model.ready = False
            model.state = model_pb2.MODEL_STATE_UNAVAILABLE
            model.state_message = (
                f"{', '.join(missing)} (which it calls) not serving; load with `ferry models load "
                f"{missing[0]}`; its calls answer MODEL_NOT_LOADED meanwhile"
            )
        return model

    def _ready(self, name: str) -> bool:
        return not isinstance(self._models[name], Unserved)

    def names(self) -> list[str]:
        """Every configured model's name, sorted."""
        return sorted(self._configs)

    def default_version(self, name: str) -> str:
        """The version calls naming none go to."""
        return self._defaults[self.config(name).name]

    async def load(self, name: str, version: str = "", record: bool = False) -> Served:
        """Loads ``name`` at ``version`` (empty: the default) unless it serves already; returns it
        serving. ``record``: an admin asked, so the desired state is kept once the load succeeded,
        and the models it calls (an ensemble's members, a notebook's required models) load first.

        Raises:
            NotFound: not a configured model or version.
            FailedPrecondition: MODEL_LOAD_FAILED with the reason (the version is left FAILED).
        """
        config = self.config(name, version)
        key = (config.name, config.version)
        if record:  # an admin asked for an ensemble or a notebook: the models it calls come with it
            for needed in self._needs(config):
                if not self._ready(needed):
                    await self.load(needed, record=True)
        async with self._locks[key]:
            current = self._versions[config.name][config.version]
            if not isinstance(current, Unserved):
                if record:
                    await self._record.loaded(*key, True)
                return current
            if self._build is None:
                raise RuntimeError("the repository loads models once the service has started")
            self._set(config, Unserved(config, LOADING))
            stack, started = AsyncExitStack(), time.perf_counter()
            try:
                served = await self._build(config, stack)
            except Exception as err:
                await stack.aclose()
                log.error("model %s v%s failed to load: %s", *key, err, exc_info=True)
                self._set(config, Unserved(config, FAILED, str(err)))
                raise FailedPrecondition(
                    f"model {config.name!r} version {config.version!r} failed to load: {err}; the other "
                    "models still serve",
                    "MODEL_LOAD_FAILED",
                    {"model": config.name, "version": config.version},
                ) from None
            self._stacks[key] = stack
            self._set(config, served)
            log.info("loaded %s v%s in %.1f s", *key, time.perf_counter() - started)
            if record:
                await self._record.loaded(*key, True)
            return served

    def _set(self, config: ModelConfig, entry: Served) -> None:
        self._versions[config.name][config.version] = entry
        if self._defaults[config.name] == config.version:
            self._publish(config.name)

    async def unload(self, name: str, version: str = "", record: bool = False, why: str = "") -> Served:
        """Stops serving ``name`` at ``version`` (empty: every version of it) and gives its memory
        back; returns the model's default entry. Ensembles and notebooks calling it stay loaded and
        answer MODEL_NOT_LOADED naming it. ``record``: an admin asked, so the desired state is kept.
        ``why``: the reason listed (default: an admin unloaded it).

        Raises:
            NotFound: not a configured model or version.
        """
        model = self.config(name).name
        versions = [self.config(model, version).version] if version else list(self._configs[model])
        freed = False
        for v in versions:
            freed |= await self._unload_one(self._configs[model][v], why)
            if record:
                await self._record.loaded(model, v, False)
        if freed:
            await asyncio.to_thread(give_memory_back)
        return self._models[model]

    async def _unload_one(self, config: ModelConfig, why: str) -> bool:
        """Unloads one version; True when it was serving (so there is memory to give back)."""
        key = (config.name, config.version)
        async with self._locks[key]:
            current = self._versions[config.name][config.version]
            if isinstance(current, Unserved) and current.state == UNLOADED:
                return False
            why = why or "unloaded by an admin; load it again to serve it"
            self._set(config, Unserved(config, UNLOADED, why))
            if isinstance(current, ServedModel):  # new calls are refused from here on
                await self._drain(current)
            stack = self._stacks.pop(key, None)
            del current
            if stack is None:
                return False
            await stack.aclose()
            log.info("unloaded %s v%s", *key)
            return True

    def prefer(self, name: str, version: str) -> None:
        """Makes ``version`` the default before anything loads (the kept choice, at start); an
        unknown model or version (the models file changed since) is logged and ignored."""
        try:
            config = self.config(name, version)
        except NotFound as err:
            log.warning("keeping %s's configured default version: %s", name, err.message)
            return
        self._defaults[config.name] = config.version
        self._publish(config.name)

    async def set_default(self, name: str, version: str, record: bool = False, load: bool = False) -> Served:
        """Makes ``version`` the one that answers calls to ``name`` naming no version; returns it.

        Calls already running keep the entry they took, so none fails. ``load``: load the version
        first if it is not serving (a replica converging to another's change); else it must serve.

        Raises:
            NotFound: not a configured model or version.
            FailedPrecondition: MODEL_NOT_LOADED (load it first), or MODEL_LOAD_FAILED.
        """
        if not version:
            raise InvalidArgument(
                "version is empty; name the version that should answer calls naming none, e.g. 2",
                "INVALID_MODEL_VERSION",
                {"model": name, "field": "version"},
            )
        config = self.config(name, version)
        entry = self._versions[config.name][config.version]
        if isinstance(entry, Unserved):
            if not load:
                raise FailedPrecondition(
                    f"version {config.version!r} of model {config.name!r} is not serving "
                    f"({entry.message or 'loading'}); load it first: `ferry models load "
                    f"{config.name}:{config.version}`, then make it the default",
                    "MODEL_NOT_LOADED",
                    {"model": config.name, "version": config.version},
                )
            entry = await self.load(config.name, config.version)
        previous, self._defaults[config.name] = self._defaults[config.name], config.version
        self._publish(config.name)
        if previous != config.version:
            log.info("model %s: default version %s -> %s", config.name, previous, config.version)
        if record:
            await self._record.default(config.name, config.version)
        return entry

    async def _drain(self, served: ServedModel) -> None:
        """Waits (at most ``drain_s``) for the calls already queued to be answered."""
        deadline = time.monotonic() + self._drain_s
        # Polled: the batcher signals no event when its queue empties, and unloading is rare.
        while served.queued and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stops every model still serving (at shutdown)."""
        for key in list(self._stacks):
            await self._stacks.pop(key).aclose()
