"""In-process gRPC servers on port 0 for gateway tests, with Ferry's real server interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc

from services.common.interceptors import ServerInterceptor
from services.common.readiness import Readiness


@asynccontextmanager
async def serving(register: Callable[[grpc.aio.Server], None]) -> AsyncIterator[str]:
    """Runs a grpc.aio server with the servicers ``register`` adds; yields its target."""
    server = grpc.aio.server(interceptors=[ServerInterceptor("test", Readiness.started("test"))])
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
