"""Boots a Ferry service: gRPC server, health, reflection, metrics, tracing, graceful shutdown.

Each service implements ``FerryService``; ``run_service`` owns the lifecycle so that every
service starts, reports readiness and stops the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Collection, Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from typing import Protocol, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.channels import server_options
from services.common.interceptors import Prescan, ServerInterceptor, Shed
from services.common.logs import setup_logging
from services.common.metrics import start_metrics_server
from services.common.readiness import Readiness
from services.common.settings import ServiceSettings
from services.common.tracing import setup_tracing

log = logging.getLogger(__name__)


class FerryService(Protocol):
    """What a service provides to the shared runtime."""

    name: str
    """Short service name: gateway, inference, jobs or store."""

    def service_names(self) -> Sequence[str]:
        """Full names of the gRPC services it serves, for health and reflection."""
        ...

    def register(self, server: grpc.aio.Server) -> None:
        """Adds its servicers to ``server`` (called before the server starts)."""
        ...

    async def start(self, stack: AsyncExitStack, readiness: Readiness) -> None:
        """Connects, loads and warms up; returns when ready to serve. Cleanups go on ``stack``.

        A service whose dependencies can come and go registers probes on ``readiness``
        (``watch_dependency``); it serves only while they are up.
        """
        ...


def _own_interceptors(service: FerryService) -> Sequence[grpc.aio.ServerInterceptor]:
    """A service's own interceptors (an optional ``interceptors()`` method), run inside the common one.

    Inside: the common interceptor's readiness gate, span, error mapping and access line cover them.
    """
    own = getattr(service, "interceptors", None)
    return list(own()) if callable(own) else []


def _prescans(service: FerryService) -> Mapping[str, Prescan]:
    """A service's checks of requests' bytes before they are parsed, by method (an optional
    ``request_checks()`` method): a request too costly to parse is refused unparsed."""
    checks = getattr(service, "request_checks", None)
    return dict(checks()) if callable(checks) else {}


def _serialized(service: FerryService) -> Collection[str]:
    """The methods whose handlers yield their responses already serialized (an optional
    ``serialized_responses()`` method): gRPC sends those bytes as they are."""
    serialized = getattr(service, "serialized_responses", None)
    return frozenset(serialized()) if callable(serialized) else frozenset()


def _shedding(own: Sequence[grpc.aio.ServerInterceptor]) -> Shed | None:
    """The ``shed`` of a service's own interceptor (the gateway's in-flight bound), if one has it:
    the common interceptor asks it before a call is read."""
    for interceptor in own:
        shed = getattr(interceptor, "shed", None)
        if callable(shed):
            return cast(Shed, shed)
    return None


def common_interceptor(
    service: FerryService, readiness: Readiness, own: Sequence[grpc.aio.ServerInterceptor]
) -> ServerInterceptor:
    """The interceptor in front of every call of ``service``, ``own`` being its own interceptors:
    readiness, spans, errors, and what the service asks of the wire (its checks of requests'
    bytes, its methods whose responses are already serialized)."""
    return ServerInterceptor(
        service.name,
        readiness,
        shed=_shedding(own),
        prescans=_prescans(service),
        serialized=_serialized(service),
    )


async def run_service(service: FerryService, settings: ServiceSettings) -> None:
    """Runs ``service`` until SIGTERM or SIGINT, then shuts it down gracefully (SIGINT without the
    shutdown delay: see ``ServiceSettings.shutdown_delay_s``)."""
    setup_logging(service.name, settings.log_level)
    shutdown_tracing = setup_tracing(f"ferry-{service.name}", settings.otlp_endpoint)
    start_metrics_server(settings.grpc_host, settings.metrics_port)

    health_servicer = health.aio.HealthServicer()
    names = ["", *service.service_names()]
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    readiness = Readiness(service.name, health_servicer, names)
    own = _own_interceptors(service)
    server = grpc.aio.server(
        interceptors=[common_interceptor(service, readiness, own), *own],
        options=server_options(
            settings.max_message_bytes, settings.max_connection_age_s, settings.max_connection_age_grace_s
        ),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    reflection.enable_server_reflection(
        [*service.service_names(), health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )

    address = f"{settings.grpc_host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    await server.start()
    log.info("listening on %s (NOT_SERVING until ready)", address)

    stop = asyncio.Event()
    # SIGTERM: this process leaves while its callers stay (a rolling restart, a pod removed), so it
    # waits SHUTDOWN_DELAY_S for balancers to move away. SIGINT: its callers have stopped already
    # (``ferry up`` stopping the whole stack in reverse order, or Ctrl-C on one process), so no
    # balancer can still send here and it drains at once.
    callers_gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def stop_at_once() -> None:
        callers_gone.set()
        stop.set()

    loop.add_signal_handler(signal.SIGINT, stop_at_once)

    async with AsyncExitStack() as stack:
        stack.callback(shutdown_tracing)  # flushes buffered spans last
        starting = asyncio.create_task(service.start(stack, readiness))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            if starting.exception() is not None:
                await server.stop(0)
                starting.result()  # re-raises: the process exits non-zero with the cause logged
            await readiness.mark_started()
            log.info("started: %s", ", ".join(service.service_names()) or "(health only)")
            await stop.wait()
        else:
            starting.cancel()
        await readiness.mark_stopping()
        if settings.shutdown_delay_s and starting.done() and not callers_gone.is_set():
            # Health says NOT_SERVING now, but calls still get answers until balancers have moved
            # away: refusing them at once would fail calls routed here before they noticed.
            log.info("leaving: NOT_SERVING, still answering for %.1fs", settings.shutdown_delay_s)
            with suppress(TimeoutError):  # a SIGINT meanwhile ends the wait
                await asyncio.wait_for(callers_gone.wait(), settings.shutdown_delay_s)
        log.info("shutting down: draining for up to %.0fs", settings.shutdown_grace_s)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.shutdown_grace_s)
    log.info("stopped")
