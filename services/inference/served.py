"""One served model: decode off the event loop, batch, run, and shape the answer as protos."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence

import grpc
import numpy as np
import numpy.typing as npt

from ferry.inference.v1 import inference_service_pb2
from ferry.models.v1 import model_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import DeadlineExceeded, ResourceExhausted, status_to_proto
from services.inference import metrics
from services.inference.batcher import DynamicBatcher
from services.inference.decoding import DecodeQueue
from services.inference.preprocessing import ACCEPTED_FORMATS_TEXT, InvalidImage, check_image_pixels
from services.inference.runner import Item, ModelRunner, TopK
from services.inference.scheduling import Priority


class ServedModel:
    """A loaded model behind its own dynamic batcher.

    Args:
        runner: The loaded model.
        batcher: The batcher whose run function is ``runner.run``.
        decoder: The decode queue shared by every model.
        max_image_pixels: Most pixels an input image may declare.
    """

    def __init__(
        self,
        runner: ModelRunner,
        batcher: DynamicBatcher[Item, TopK],
        decoder: DecodeQueue,
        max_image_pixels: int,
    ) -> None:
        self.spec = runner.spec
        self.runner = runner
        self.batcher = batcher
        self._decoder = decoder
        self._max_image_pixels = max_image_pixels
        self._decoding = 0  # inputs admitted for this model and not yet in its batching queue
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
        self,
        inputs: Sequence[types_pb2.Input],
        top_k: int,
        priority: Priority = Priority.NORMAL,
        deadline: float | None = None,
    ) -> list[inference_service_pb2.PredictResult]:
        """Predicts every input concurrently; a bad input gets its own error, the rest still run.

        Args:
            inputs: The inputs, answered in order.
            top_k: Classes per input.
            priority: Where the inputs go in the decode and batching queues.
            deadline: When the caller stops waiting (``time.monotonic()``); inputs still queued
                then are dropped.

        Raises:
            ResourceExhausted: The model's queue is full (checked before any decoding).
            DeadlineExceeded: The deadline passed before an input ran.
        """
        received = time.perf_counter()
        # Counted from here: inputs being decoded hold their place in the model's bound, so a
        # burst is refused at once instead of after decoding.
        self.batcher.check_room(len(inputs), elsewhere=self._decoding)
        admitted = [True] * len(inputs)  # which inputs still count in self._decoding
        self._decoding += len(inputs)
        tasks = [
            asyncio.ensure_future(self._predict_one(i, item, top_k, priority, deadline, received, admitted))
            for i, item in enumerate(inputs)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One input's failure (or the call's cancellation) ends the call: the others give up
            # their places in the queues instead of running for nobody.
            for task in tasks:
                task.cancel()
            raise
        finally:
            # A task cancelled before it started never runs its own release.
            for index in range(len(admitted)):
                self._release(admitted, index)

    @property
    def waiting(self) -> int:
        """Inputs admitted for this model that are still being decoded (or waiting to be)."""
        return self._decoding

    def _release(self, admitted: list[bool], index: int) -> None:
        if admitted[index]:
            admitted[index] = False
            self._decoding -= 1

    def _decode(self, content: bytes) -> npt.NDArray[np.float32]:
        check_image_pixels(content, self._max_image_pixels)
        return self.spec.preprocess(content)

    async def _predict_one(
        self,
        index: int,
        item: types_pb2.Input,
        top_k: int,
        priority: Priority,
        deadline: float | None,
        received: float,
        admitted: list[bool],
    ) -> inference_service_pb2.PredictResult:
        started = time.perf_counter()
        try:
            if item.WhichOneof("kind") != "image":
                raise InvalidImage("it has no image")
            call = functools.partial(self._decode, item.image.content)
            pixels = await self._decoder.run(call, priority, deadline)
        except InvalidImage as err:
            metrics.ITEMS.labels(self.spec.name, "invalid_image").inc()
            return inference_service_pb2.PredictResult(
                error=status_to_proto(
                    grpc.StatusCode.INVALID_ARGUMENT, _invalid_message(index, err), err.reason
                )
            )
        finally:
            self._release(admitted, index)
        decoded = time.perf_counter()
        try:
            batched = await self.batcher.submit(Item(pixels, top_k), priority, deadline, admitted=True)
        except ResourceExhausted:
            raise  # counted by the batcher
        except DeadlineExceeded:
            metrics.ITEMS.labels(self.spec.name, "expired").inc()
            raise
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


def _invalid_message(index: int, err: InvalidImage) -> str:
    if err.reason != InvalidImage.reason:
        return f"input {index} is refused: {err}"
    return (
        f"input {index} is not a decodable image ({err}); "
        f"send the encoded file of a {ACCEPTED_FORMATS_TEXT} picture as the image content"
        " (base64 in JSON)"
    )
