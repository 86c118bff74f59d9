"""One served model: decode off the event loop, batch, run, and shape the answer as protos."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor

import grpc

from ferry.inference.v1 import inference_service_pb2
from ferry.models.v1 import model_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import status_to_proto
from services.inference import metrics
from services.inference.batcher import DynamicBatcher
from services.inference.preprocessing import ACCEPTED_FORMATS_TEXT, InvalidImage
from services.inference.runner import Item, ModelRunner, TopK

INVALID_IMAGE = "INVALID_IMAGE"


class ServedModel:
    """A loaded model behind its own dynamic batcher.

    Args:
        runner: The loaded model.
        batcher: The batcher whose run function is ``runner.run``.
        decode_pool: Threads that decode and preprocess inputs.
    """

    def __init__(
        self, runner: ModelRunner, batcher: DynamicBatcher[Item, TopK], decode_pool: Executor
    ) -> None:
        self.spec = runner.spec
        self.runner = runner
        self.batcher = batcher
        self._decode_pool = decode_pool
        self.ready = False

    def describe(self) -> model_pb2.Model:
        """This model as the public ``ferry.models.v1.Model`` resource."""
        spec = self.spec
        return model_pb2.Model(
            name=f"models/{spec.name}",
            display_name=spec.display_name,
            description=spec.description,
            task=spec.task,
            labels_count=len(spec.labels),
            ready=self.ready,
            max_batch_size=self.batcher.max_batch_size,
        )

    async def predict(
        self, inputs: Sequence[types_pb2.Input], top_k: int
    ) -> list[inference_service_pb2.PredictResult]:
        """Predicts every input concurrently; a bad input gets its own error, the rest still run."""
        received = time.perf_counter()
        results = await asyncio.gather(
            *(self._predict_one(index, item, top_k, received) for index, item in enumerate(inputs))
        )
        return list(results)

    async def _predict_one(
        self, index: int, item: types_pb2.Input, top_k: int, received: float
    ) -> inference_service_pb2.PredictResult:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            if item.WhichOneof("kind") != "image":
                raise InvalidImage("it has no image")
            pixels = await loop.run_in_executor(self._decode_pool, self.spec.preprocess, item.image.content)
        except InvalidImage as err:
            metrics.ITEMS.labels(self.spec.name, "invalid_image").inc()
            message = (
                f"input {index} is not a decodable image ({err}); "
                f"send the encoded file of a {ACCEPTED_FORMATS_TEXT} picture as the image content"
                " (base64 in JSON)"
            )
            return inference_service_pb2.PredictResult(
                error=status_to_proto(grpc.StatusCode.INVALID_ARGUMENT, message, INVALID_IMAGE)
            )
        decoded = time.perf_counter()
        try:
            batched = await self.batcher.submit(Item(pixels, top_k))
        except Exception:
            metrics.ITEMS.labels(self.spec.name, "error").inc()
            raise
        metrics.ITEMS.labels(self.spec.name, "ok").inc()
        labels = self.spec.labels
        return inference_service_pb2.PredictResult(
            classes=[
                types_pb2.ClassScore(label=labels[i], score=score, index=i)
                for i, score in zip(batched.output.indices, batched.output.scores, strict=True)
            ],
            timing=types_pb2.Timing(
                decode_ms=(decoded - started) * 1000,
                queue_ms=batched.queue_ms,
                inference_ms=batched.inference_ms,
                batch_size=batched.batch_size,
                total_ms=(time.perf_counter() - received) * 1000,
            ),
        )
