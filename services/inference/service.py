"""The inference service: loads the configured models, warms them up, and serves them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

import grpc
import torch

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from services.common.readiness import Readiness
from services.inference.batcher import DynamicBatcher
from services.inference.models import ModelSpec, resolve
from services.inference.runner import Item, ModelRunner, TopK, resolve_device
from services.inference.served import ServedModel
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

SERVICE_NAME = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceService:
    """FerryService for ``ferry.inference.v1.InferenceService``.

    Raises:
        ValueError: At construction, when settings name a model that is not registered.
    """

    name = "inference"

    def __init__(self, settings: InferenceSettings) -> None:
        self._settings = settings
        self._specs: list[ModelSpec] = resolve(settings.models)  # fail before binding a port
        self.models: dict[str, ServedModel] = {}
        """Models ready to serve, by name; filled by start()."""

    def service_names(self) -> Sequence[str]:
        """The gRPC service this process serves."""
        return [SERVICE_NAME]

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the InferenceService servicer to ``server``."""
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.models), server
        )

    async def start(self, stack: AsyncExitStack, readiness: Readiness) -> None:
        """Loads and warms up every configured model; returns once all can serve."""
        settings = self._settings
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        device = resolve_device(settings.device)
        decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        stack.callback(decode_pool.shutdown, wait=False, cancel_futures=True)
        for spec in self._specs:
            # Loading and warm-up block for seconds; in a thread, health checks still get answers.
            runner = await asyncio.to_thread(ModelRunner, spec, device)
            await asyncio.to_thread(runner.warm_up, settings.warmup_batches, settings.max_batch_size)
            batcher: DynamicBatcher[Item, TopK] = DynamicBatcher(
                spec.name, runner.run, settings.max_batch_size, settings.max_batch_delay_ms / 1000
            )
            await batcher.start(stack)
            served = ServedModel(runner, batcher, decode_pool)
            served.ready = True
            self.models[spec.name] = served
            log.info(
                "serving %s (max batch %d, delay %.1f ms)",
                spec.name,
                batcher.max_batch_size,
                settings.max_batch_delay_ms,
            )
