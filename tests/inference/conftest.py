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
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image
from skimage import data as skimage_data

from devstack.infra import free_port
from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.types.v1 import types_pb2
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


#: The health name of inference's own gRPC service (SERVING once calls are answered).
SERVICE = "ferry.inference.v1.InferenceService"


@dataclass
class RunningInference:
    """A running inference service and what was seen while it started."""

    service: InferenceService
    channel: grpc.aio.Channel
    stub: inference_service_pb2_grpc.InferenceServiceStub
    health_seen: list[tuple[int, int]] = field(default_factory=list)
    """Health statuses polled from bind until the whole was SERVING, in order: (overall "", the
    InferenceService's own name)."""
    early_classes: list[int] = field(default_factory=list)
    """The cat photo's top classes, asked of efficientnet-lite0 while the whole was NOT_SERVING."""
    early_load: str = ""
    """The status code (and reason) a LoadModel got while the whole was NOT_SERVING."""


async def _early_calls(running: RunningInference, cat_jpeg: bytes) -> None:
    """What a caller gets from a service still loading models: the first one answers, admin waits."""
    photo = types_pb2.Input(image=types_pb2.Image(content=cat_jpeg))
    answer = await running.stub.Predict(
        inference_service_pb2.PredictRequest(model="efficientnet-lite0", inputs=[photo], top_k=1), timeout=30
    )
    running.early_classes = [c.index for r in answer.results for c in r.classes]
    try:
        await running.stub.LoadModel(inference_service_pb2.LoadModelRequest(model="minilm"), timeout=30)
        running.early_load = "OK"
    except grpc.aio.AioRpcError as err:
        status, info = rpc_status.from_call(err), error_details_pb2.ErrorInfo()  # type: ignore[arg-type]
        reason = info.reason if status and status.details and status.details[0].Unpack(info) else ""
        running.early_load = f"{err.code().name} {reason}"


async def _wait_serving(running: RunningInference, task: asyncio.Task[None], cat_jpeg: bytes) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    while not task.done():
        with contextlib.suppress(grpc.aio.AioRpcError):  # not bound yet
            statuses = tuple(
                [
                    (await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)).status
                    for name in ("", SERVICE)
                ]
            )
            if not running.health_seen or running.health_seen[-1] != statuses:
                running.health_seen.append(statuses)  # type: ignore[arg-type]
            if statuses[0] == serving:
                return
            if statuses[1] == serving and not running.early_load:
                await _early_calls(running, cat_jpeg)
        await asyncio.sleep(0.05)
    task.result()  # the service died during start: show why
    raise AssertionError("inference service stopped before it was SERVING")


@pytest.fixture(scope="session")
async def inference(cat_jpeg: bytes) -> AsyncIterator[RunningInference]:
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
        await asyncio.wait_for(_wait_serving(running, task, cat_jpeg), timeout=300)
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
