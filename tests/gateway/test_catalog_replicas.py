"""With several inference replicas, the gateway's catalog lists models LOADING while every replica
loads, as it does for one replica, not UNAVAILABLE as if inference had crashed.

Two stand-in replicas (real gRPC servers with gRPC health and ListModels, on real ports) behind
the gateway's own balanced channel and ``followed_catalog``: both serve (READY), then both load
(NOT_SERVING, their models LOADING: a restart of all of them, or a model loaded everywhere), then
both serve again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from devstack.infra import free_port
from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common.channels import open_channel
from services.common.downstream import Backend
from services.gateway.catalog import ModelCatalog, followed_catalog

READY = model_pb2.MODEL_STATE_READY
LOADING = model_pb2.MODEL_STATE_LOADING
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Replica(inference_service_pb2_grpc.InferenceServiceServicer):
    """An inference replica's health and model list, switched between serving and loading."""

    def __init__(self) -> None:
        self.health = HealthServicer()
        self.state = READY

    async def ListModels(self, request: Any, context: Any) -> inference_service_pb2.ListModelsResponse:
        model = model_pb2.Model(name="models/m", state=self.state, ready=self.state == READY)
        model.versions.add(state=self.state)
        return inference_service_pb2.ListModelsResponse(models=[model])

    async def serving(self, serves: bool) -> None:
        self.state = READY if serves else LOADING
        await self.health.set("", SERVING if serves else NOT_SERVING)


async def _until(catalog: ModelCatalog, holds: Callable[[model_pb2.Model], bool]) -> model_pb2.Model:
    started = time.monotonic()
    while True:
        (model,) = await catalog.served()
        if holds(model):
            return model
        assert time.monotonic() - started < 10, f"still {model_pb2.ModelState.Name(model.state)}: {model}"
        await asyncio.sleep(0.05)


async def test_every_replica_loading_is_listed_loading_not_unavailable() -> None:
    replicas, ports = [Replica(), Replica()], [free_port(), free_port()]
    async with AsyncExitStack() as stack:
        for replica, port in zip(replicas, ports, strict=True):
            server = grpc.aio.server()
            inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(replica, server)
            health_pb2_grpc.add_HealthServicer_to_server(replica.health, server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            stack.push_async_callback(server.stop, None)
            await replica.serving(True)
        target = ",".join(f"127.0.0.1:{port}" for port in ports)
        channel = open_channel(target, 1024 * 1024)  # the gateway's: health-checked, balanced
        stack.push_async_callback(channel.close)
        backend = Backend("inference", channel, 5.0, own_unavailable=True)
        catalog = followed_catalog(stack, channel, backend, 0.2, target, 1024 * 1024)

        assert (await _until(catalog, lambda m: m.state == READY)).ready
        for replica in replicas:
            await replica.serving(False)
        model = await _until(catalog, lambda m: m.state != READY)
        # Before: UNAVAILABLE, "inference is not answering (UNAVAILABLE: ...)": the balanced
        # channel reaches no replica while none serves, so its health check failed as for a crash.
        assert model.state == LOADING and not model.ready, model
        await asyncio.sleep(1.0)  # and stays so while they load
        (model,) = await catalog.served()
        assert model.state == LOADING, model

        await replicas[1].serving(True)
        assert (await _until(catalog, lambda m: m.state == READY)).ready
