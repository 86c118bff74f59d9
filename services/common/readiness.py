"""One readiness gate for every service: health, and the answer callers get while it is not ready.

A service is ready once its ``start`` returned and while every dependency it declared is up.
gRPC health reports exactly that (SERVING / NOT_SERVING), and the server interceptor answers
every other RPC with UNAVAILABLE (REST 503) plus retry advice meanwhile, so a caller never sees
a half-started service's accidental answer (a NOT_FOUND for a model still loading, say).

A service whose calls can be answered part by part while it starts (inference: a model that has
loaded serves while the next ones load) opens its calls early (``open_calls``): its gRPC services'
own health names say SERVING and calls reach it, while overall health ("") still says
NOT_SERVING until ``start`` returned, so that balancers, probes and ``ferry up`` keep waiting for
the whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

from google.protobuf import duration_pb2
from grpc_health.v1 import health, health_pb2

from services.common.errors import Unavailable
from services.common.tasks import spawn

log = logging.getLogger(__name__)

#: How long a caller is advised to wait before retrying a not-ready service.
RETRY_AFTER_S = 1.0

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: A dependency probe: returns "" when the dependency is up, else what is wrong with it.
Probe = Callable[[], Awaitable[str]]


class Readiness:
    """Whether a service may serve, and why not; mirrored into its gRPC health service.

    Args:
        service: the service's short name, for messages ("inference").
        health_servicer: the server's health servicer, kept in step with readiness.
        names: the health service names to set ("" and each gRPC service).
    """

    def __init__(
        self, service: str, health_servicer: health.aio.HealthServicer, names: Sequence[str] = ("",)
    ) -> None:
        self._service = service
        self._health = health_servicer
        self._names = list(names)
        self._started = False
        self._open_early = False
        self._stopping = False
        self._missing: dict[str, str] = {}
        # Dependencies only the service's background work needs (see set_dependency).
        self._background: set[str] = set()
        self._published: tuple[bool, bool] | None = None

    @classmethod
    def started(cls, service: str) -> Readiness:
        """A readiness that is already started, for a servicer hosted outside ``run_service``."""
        readiness = cls(service, health.aio.HealthServicer())
        readiness._started = True
        return readiness

    @property
    def serving(self) -> bool:
        """What overall health ("") reports: started, not stopping, and every dependency up."""
        return self._started and self.accepting and not self._stopping and not self._missing

    @property
    def accepting(self) -> bool:
        """Whether calls are answered: started and every dependency the calls need up.

        A stopping service still answers the calls that reach it until its server stops
        accepting them: health already says NOT_SERVING so that callers move away, and turning
        away calls already on their way would fail them for nothing during a rolling restart.
        A dependency only background work needs (``set_dependency(..., background=True)``)
        does not stop calls.
        """
        return (self._started or self._open_early) and not (self._missing.keys() - self._background)

    def reason(self) -> str:
        """Why the service is not serving, in words a caller can act on ("" when it is)."""
        if self._stopping:
            return f"{self._service} is shutting down"
        if not self._started:
            return f"{self._service} is starting"
        if self._missing:
            parts = "; ".join(f"{name}: {why}" for name, why in sorted(self._missing.items()))
            return f"{self._service} is waiting for a dependency ({parts})"
        return ""

    def check(self) -> None:
        """Raises the UNAVAILABLE error callers get while the service is not serving.

        Raises:
            Unavailable: reason NOT_READY, with the cause and ``retry_after_s`` in its metadata.
        """
        if self.accepting:
            return
        raise Unavailable(
            f"{self.reason()}; retry in {RETRY_AFTER_S:g} s",
            reason="NOT_READY",
            metadata={"service": self._service, "retry_after_s": f"{RETRY_AFTER_S:g}"},
            retry_after=duration_pb2.Duration(seconds=int(RETRY_AFTER_S)),
        )

    async def mark_started(self) -> None:
        """Called once ``start`` returned."""
        self._started = True
        await self._publish()

    async def open_calls(self) -> None:
        """Called by a ``start`` still under way whose calls can already be answered (each says
        for itself what is not ready yet): they reach the service, and its gRPC services' health
        names say SERVING; overall health ("") waits for ``mark_started``."""
        self._open_early = True
        await self._publish()

    async def mark_stopping(self) -> None:
        """Called first on shutdown: callers are turned away while in-flight calls finish."""
        self._stopping = True
        await self._publish()

    async def set_dependency(self, name: str, problem: str, *, background: bool = False) -> None:
        """Records whether dependency ``name`` is up ("" means up, anything else is what is wrong).

        Args:
            background: only the service's background work needs it (the jobs runner's
                inference): while it is down, overall health ("") says NOT_SERVING and
                ``serving`` is false, so that work pauses, but the gRPC services' own health
                stays SERVING and calls are still answered (the job queue's API needs no inference).
        """
        if background:
            self._background.add(name)
        before = self._missing.get(name)
        if problem:
            self._missing[name] = problem
            if before is None:
                log.warning("%s is not ready: %s: %s", self._service, name, problem)
        elif before is not None:
            del self._missing[name]
            log.info("%s: %s is back", self._service, name)
        await self._publish()

    async def _publish(self) -> None:
        serving = self.serving
        calls = self.accepting and not self._stopping
        if (serving, calls) == self._published:
            return
        self._published = (serving, calls)
        for name in self._names:
            up = serving if name == "" else calls
            await self._health.set(name, _SERVING if up else _NOT_SERVING)
        if calls and not serving and not self._started:
            log.info("health: NOT_SERVING (%s), answering calls meanwhile", self.reason())
        else:
            log.info("health: %s", "SERVING" if serving else f"NOT_SERVING ({self.reason()})")


async def watch_dependency(
    stack: AsyncExitStack,
    readiness: Readiness,
    name: str,
    probe: Probe,
    every_s: float = 1.0,
    *,
    background: bool = False,
) -> None:
    """Probes dependency ``name`` now, then every ``every_s`` seconds for the service's life.

    The first probe runs before this returns, so a service that starts without its dependency
    reports NOT_SERVING from the start rather than a moment later. ``background``: see
    ``Readiness.set_dependency``.
    """

    async def probe_once() -> None:
        try:
            problem = await probe()
        except Exception as err:  # a probe that breaks says the dependency is not usable
            problem = f"probe failed: {err!r}"
        await readiness.set_dependency(name, problem, background=background)

    async def loop() -> None:
        while True:
            await asyncio.sleep(every_s)
            await probe_once()

    await probe_once()
    spawn(stack, loop(), f"watch-{name}")
