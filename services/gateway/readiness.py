"""Waiting for the gateway's gRPC dependencies, so it reports SERVING only once they do."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

_CHECK_TIMEOUT_S = 2.0
_RETRY_EVERY_S = 0.5
_LOG_EVERY_S = 5.0


async def wait_serving(channel: grpc.aio.Channel, name: str, target: str, timeout_s: float) -> None:
    """Polls ``target``'s gRPC health (the overall "" service) until it says SERVING.

    Args:
        channel: an open channel to the dependency.
        name: the dependency's name for logs, for example "inference".
        target: its address, for logs.
        timeout_s: how long to wait in all.

    Raises:
        TimeoutError: it was not SERVING within ``timeout_s``; the gateway must not start.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    started = time.monotonic()
    last_log = started - _LOG_EVERY_S
    state = "no answer yet"
    while True:
        try:
            answer = await stub.Check(  # type: ignore[attr-defined]  # the published stubs omit the methods
                health_pb2.HealthCheckRequest(service=""), timeout=_CHECK_TIMEOUT_S
            )
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                log.info("%s at %s is SERVING", name, target)
                return
            state = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        except grpc.aio.AioRpcError as err:
            state = f"{err.code().name}: {err.details()}"
        now = time.monotonic()
        if now - started > timeout_s:
            raise TimeoutError(
                f"{name} at {target} was not SERVING within {timeout_s:g}s (last answer: {state}); "
                f"start {name} first or fix FERRY_GATEWAY_{name.upper()}_TARGET"
            )
        if now - last_log >= _LOG_EVERY_S:
            log.info("waiting for %s at %s to be SERVING (%s)", name, target, state)
            last_log = now
        await asyncio.sleep(_RETRY_EVERY_S)
