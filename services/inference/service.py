"""The inference service: loads the configured models, warms them up, and serves them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

import grpc
import torch

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from services.common.readiness import Readiness
from services.inference.batcher import DynamicBatcher
from services.inference.decoding import DecodeQueue
from services.inference.models import ModelSpec, resolve
from services.inference.runner import Item, ModelRunner, TopK, resolve_device
from services.inference.served import ServedModel
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings
from services.inference.tuning import tune_batch_size

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
        aging_s = settings.priority_aging_ms / 1000
        decoder = DecodeQueue(settings.decode_threads, aging_s)
        await decoder.start(stack)
        for spec in self._specs:
            # Loading and warm-up block for seconds; in a thread, health checks still get answers.
            runner = await asyncio.to_thread(ModelRunner, spec, device)
            batch_size = settings.max_batch_size
            if batch_size is None:
                # Warm first: the first passes of a fresh model pay one-off set-up costs.
                await asyncio.to_thread(runner.warm_up, settings.warmup_batches, 1)
                batch_size = await asyncio.to_thread(
                    tune_batch_size,
                    spec.name,
                    runner.time_batch,
                    settings.batch_size_search_max,
                    settings.batch_latency_budget_ms / 1000,
                )
            await asyncio.to_thread(runner.warm_up, settings.warmup_batches, batch_size)
            batcher: DynamicBatcher[Item, TopK] = DynamicBatcher(
                spec.name,
                runner.run,
                batch_size,
                max_delay_s=settings.max_batch_delay_ms / 1000,
                max_queue=settings.max_queue,
                aging_s=aging_s,
            )
            await batcher.start(stack)
            served = ServedModel(runner, batcher, decoder, settings.max_image_pixels)
            served.ready = True
            self.models[spec.name] = served
            log.info(
                "serving %s on %s (batch size %d%s, queue bound %d, torch threads %d, decode threads %d)",
                spec.name,
                device,
                batcher.max_batch_size,
                "" if settings.max_batch_size is None else " from FERRY_INFERENCE_MAX_BATCH_SIZE",
                settings.max_queue,
                torch.get_num_threads(),
                settings.decode_threads,
            )
