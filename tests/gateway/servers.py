"""In-process gRPC servers on port 0 for gateway tests, with Ferry's real server interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import grpc

from ferry.store.v1 import store_service_pb2_grpc
from services.common.channels import open_channel
from services.common.downstream import Backend
from services.common.interceptors import ServerInterceptor
from services.common.readiness import Readiness
from services.gateway.auth import Authenticator
from services.gateway.components import ComponentsSlot
from services.gateway.interceptors import AdmissionInterceptor
from services.gateway.settings import GatewaySettings


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


@asynccontextmanager
async def admitting(
    keys: store_service_pb2_grpc.StoreServiceServicer,
    register: Callable[[grpc.aio.Server], None],
    **settings: Any,
) -> AsyncIterator[tuple[grpc.aio.Channel, Authenticator]]:
    """A server with the common and the gateway's admission interceptor in front of the servicers
    ``register`` adds, API keys looked up in ``keys`` (store's contract); yields a channel to it
    and the authenticator (a key cache, as a gateway's)."""
    async with serving(lambda s: store_service_pb2_grpc.add_StoreServiceServicer_to_server(keys, s)) as store:
        store_channel = open_channel(store, 1024 * 1024)
        auth = Authenticator(
            store_service_pb2_grpc.StoreServiceStub(store_channel), Backend("store", store_channel, 5.0), 60.0
        )
        slot = ComponentsSlot()
        slot.fill(SimpleNamespace(auth=auth))  # type: ignore[arg-type]  # the interceptor reads only .auth
        admission = AdmissionInterceptor(slot, GatewaySettings(**settings))
        server = grpc.aio.server(
            interceptors=[
                ServerInterceptor("gateway", Readiness.started("gateway"), shed=admission.shed),
                admission,
            ]
        )
        register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield channel, auth
        finally:
            await channel.close()
            await server.stop(None)
            await store_channel.close()
