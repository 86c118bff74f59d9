"""One real inference service per test session: real weights, a real gRPC server on a free port.

It serves every shipped model: the two image classifiers, their ensemble, minilm and the
notebook-backed ``agree`` (about 10 s more at start than efficientnet-lite0 alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from skimage import data as skimage_data

from devstack.infra import free_port
from ferry.inference.v1 import inference_service_pb2_grpc
from services.common.interceptors import ServerInterceptor
from services.common.readiness import Readiness
from services.common.runtime import run_service
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings

#: What the session's service loads (the ensemble brings mobilenet-v2 along).
SESSION_MODELS = ["efficientnet-lite0", "imagenet-ensemble", "minilm", "agree"]

#: ImageNet-1k indices of the domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = frozenset(range(281, 286))
ESPRESSO = 967


def encode(pixels: np.ndarray, image_format: str = "JPEG") -> bytes:
    """Encodes an RGB array as an image file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    """scikit-image's photo of Chelsea the cat, as a JPEG."""
    return encode(skimage_data.chelsea())


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    """scikit-image's photo of a cup of coffee, as a JPEG."""
    return encode(skimage_data.coffee())


@dataclass
class RunningInference:
    """A running inference service and what was seen while it started."""

    service: InferenceService
    channel: grpc.aio.Channel
    stub: inference_service_pb2_grpc.InferenceServiceStub
    health_seen: list[int] = field(default_factory=list)
    """Health statuses polled from bind until SERVING, in order."""


async def _wait_serving(channel: grpc.aio.Channel, seen: list[int], task: asyncio.Task[None]) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    service = "ferry.inference.v1.InferenceService"
    while not task.done():
        with contextlib.suppress(grpc.aio.AioRpcError):  # not bound yet
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            if not seen or seen[-1] != answer.status:
                seen.append(answer.status)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        await asyncio.sleep(0.05)
    task.result()  # the service died during start: show why
    raise AssertionError("inference service stopped before it was SERVING")


@pytest.fixture(scope="session")
async def inference() -> AsyncIterator[RunningInference]:
    """Runs the inference service exactly as ``python -m services.inference`` does, on a free port."""
    port = free_port()
    settings = InferenceSettings(
        grpc_port=port,
        metrics_port=0,
        models=SESSION_MODELS,
        device="cpu",
        max_batch_size=8,  # set, so no batch-size timing at start (test_tuning covers it)
        warmup_batches=1,
        shutdown_grace_s=1,
    )
    service = InferenceService(settings)
    task = asyncio.create_task(run_service(service, settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    running = RunningInference(service, channel, inference_service_pb2_grpc.InferenceServiceStub(channel))
    try:
        await asyncio.wait_for(_wait_serving(channel, running.health_seen, task), timeout=300)
        yield running
    finally:
        await channel.close()
        os.kill(os.getpid(), signal.SIGTERM)  # the runtime's own shutdown path
        await asyncio.wait_for(task, timeout=30)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def serve(settings: InferenceSettings) -> AsyncIterator[tuple[InferenceService, grpc.aio.Channel]]:
    """Another inference service in this process, on a free port, for tests of its start.

    The same parts as ``run_service`` (the service's servicer on a gRPC server, then ``start``),
    without the process's signal handling, so several can run in one test session.
    """
    service = InferenceService(settings)
    readiness = Readiness.started(service.name)
    server = grpc.aio.server(interceptors=[ServerInterceptor(service.name, readiness)])
    service.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(server.stop, 0)
        await service.start(stack, readiness)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close)
        yield service, channel
