"""Served models: preprocess off the event loop, batch and run; plain values in and out.

The core of inference: it takes ``calls.Call`` / ``calls.Request`` and answers ``calls.Outcome``
values; the protocol adapters (``servicer`` for gRPC, ``models.hub`` in-process) convert at
their edge.

Three kinds share one interface (``Served``): a model behind its own dynamic batcher
(``ServedModel``), an ensemble that fans each input out to member models (``ensemble``), and a
model that is not serving (``Unserved``: still loading, or failed with the reason).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ferry.models.v1 import model_pb2
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FerryError,
    ResourceExhausted,
    Unavailable,
)
from services.inference import metrics
from services.inference.batcher import Batched, DynamicBatcher
from services.inference.calls import Answered, Call, Outcome, Refused, Request, Timing
from services.inference.decoding import DecodeQueue
from services.inference.models.config import ModelConfig
from services.inference.models.contract import IMAGE, Answer, InvalidInput, Item, ModelInput, Options
from services.inference.preprocessing import ACCEPTED_FORMATS_TEXT, InvalidImage, check_image_pixels
from services.inference.runner import ModelRunner

READY = model_pb2.MODEL_STATE_READY
LOADING = model_pb2.MODEL_STATE_LOADING
FAILED = model_pb2.MODEL_STATE_FAILED
UNLOADED = model_pb2.MODEL_STATE_UNLOADED


class Place:
    """One input's place in a model's queue bound, held from admission until it leaves decoding.

    Given back once (``release``): when the input reaches the batching queue, fails, or its call
    is cancelled first.
    """

    __slots__ = ("_held", "_served")

    def __init__(self, served: Served) -> None:
        self._served = served
        self._held = True

    def release(self) -> None:
        """Gives the place back (again: nothing)."""
        if self._held:
            self._held = False
            self._served.release(1)


class Served(abc.ABC):
    """What the protocol adapters ask of any model they list (plain values in and out)."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = config.name

    @abc.abstractmethod
    def describe(self) -> model_pb2.Model:
        """This model as the public ``ferry.models.v1.Model`` resource."""

    @abc.abstractmethod
    async def answer(self, request: Request, place: Place | None = None) -> Answered:
        """Answers one input; ``place`` is its admitted place in the queue bound, if it has one.

        Raises:
            InvalidInput: The input is not one this model can take (also InvalidImage).
            FerryError: The queue is full, the deadline passed, or the model is not serving.
        """

    def admit(self, count: int) -> None:  # noqa: B027 - a hook: models without a bound admit all
        """Refuses ``count`` more inputs when the model's queue is full (ResourceExhausted)."""

    def release(self, count: int) -> None:  # noqa: B027 - the hook's counterpart
        """Gives back places taken by ``admit``."""

    async def predict(self, call: Call) -> list[Outcome]:
        """Predicts every input concurrently; a bad input gets its own Refused, the rest still run.

        Raises:
            ResourceExhausted: The model's queue is full (checked before any decoding).
            DeadlineExceeded: The deadline passed before an input ran.
        """
        received = time.perf_counter()
        # Counted from here: inputs being decoded hold their place in the model's bound, so a
        # burst is refused at once instead of after decoding.
        self.admit(len(call.inputs))
        places = [Place(self) for _ in call.inputs]
        tasks = [
            asyncio.ensure_future(self._predict_one(i, item, call, received, places[i]))
            for i, item in enumerate(call.inputs)
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
            for place in places:  # a task cancelled before it started never released its own
                place.release()

    async def _predict_one(
        self, index: int, item: ModelInput | InvalidInput, call: Call, received: float, place: Place
    ) -> Outcome:
        try:
            if isinstance(item, InvalidInput):
                raise item
            options = call.options
            if item.candidate_labels:
                options = Options(options.top_k, item.candidate_labels)
            answered = await self.answer(
                Request(item, options, call.priority, call.deadline, call.background), place
            )
        except (InvalidImage, InvalidInput) as err:
            place.release()
            metrics.ITEMS.labels(self.name, "invalid_input").inc()
            return Refused(_invalid_message(index, err), err.reason)
        except (ResourceExhausted, DeadlineExceeded):
            raise  # counted where they happen
        except Exception:
            metrics.ITEMS.labels(self.name, "error").inc()
            raise
        metrics.ITEMS.labels(self.name, "ok").inc()
        # The total counts from the call's arrival: an input's own clock starts after admission.
        total_ms = (time.perf_counter() - received) * 1000
        return replace(answered, timing=replace(answered.timing, total_ms=total_ms))


class ServedModel(Served):
    """A loaded model behind its own dynamic batcher.

    Args:
        runner: The loaded model.
        batcher: The batcher whose run function is ``runner.run``.
        decoder: The decode queue shared by every model.
        max_image_pixels: Most pixels an input image may declare.
        batch_size_source: ``measured`` or ``configured``.
        background: Where batch jobs' inputs (``Request.background``) decode and run instead: a
            batcher of their own and the decode queue they share, on threads at the lowest CPU
            priority (``services.inference.background``). None: on ``batcher`` and ``decoder``.
    """

    def __init__(
        self,
        runner: ModelRunner,
        batcher: DynamicBatcher[Item, Answer],
        decoder: DecodeQueue,
        max_image_pixels: int,
        batch_size_source: str = "configured",
        background: tuple[DynamicBatcher[Item, Answer], DecodeQueue] | None = None,
    ) -> None:
        super().__init__(runner.model.config)
        self.model = runner.model
        self.runner = runner
        self.batcher = batcher
        self._decoder = decoder
        self._max_image_pixels = max_image_pixels
        self._batch_size_source = batch_size_source
        self._decoding = 0  # inputs admitted for this model and not yet in its batching queue
        self._background = background or (batcher, decoder)

    def describe(self) -> model_pb2.Model:
        """Metadata: task, inputs and outputs, labels, device, batch settings, state."""
        model = self.model
        return model_pb2.Model(
            name=f"models/{self.name}",
            display_name=model.display_name,
            description=model.description,
            task=model.task,
            labels_count=len(model.labels),
            ready=True,
            max_batch_size=self.batcher.max_batch_size,
            state=READY,
            version=self.config.version,
            device=str(self.runner.device),
            inputs=[_tensor_metadata(t) for t in model.inputs],
            outputs=[_tensor_metadata(t) for t in model.outputs],
            input_kinds=sorted(model.kinds),
            max_batch_delay_ms=self.config.max_batch_delay_ms or 0.0,
            max_queue=self.batcher.max_queue,
            instances=self.config.instances,
            batch_size_source=self._batch_size_source,
            graph=model.graph,
        )

    @property
    def queued(self) -> int:
        """Inputs waiting in this model's batching queues (its batch jobs' one included)."""
        background = self._background[0]
        return self.batcher.queued + (background.queued if background is not self.batcher else 0)

    @property
    def waiting(self) -> int:
        """Inputs admitted for this model that are still being decoded (or waiting to be)."""
        return self._decoding

    def admit(self, count: int) -> None:
        """Refuses the inputs when the queue, plus inputs still decoding, is full."""
        self.batcher.check_room(count, elsewhere=self._decoding)
        self._decoding += count

    def release(self, count: int) -> None:
        """Inputs that left decoding free their place in the bound."""
        self._decoding -= count

    def _preprocess(self, item: ModelInput) -> Any:
        if item.kind == IMAGE:
            check_image_pixels(item.image, self._max_image_pixels)
        return self.model.preprocess(item)

    async def answer(self, request: Request, place: Place | None = None) -> Answered:
        """Preprocesses in the decode queue, then runs in the batcher; when both are idle, both
        in the batch's thread (``_answer_alone``)."""
        started = time.perf_counter()
        if place is None:
            self.admit(1)
            place = Place(self)
        # A batch job's input decodes and runs on its own lowest-priority threads, so that it
        # never holds a core a caller's input (or the front door) wakes up for, and a caller's
        # input never waits behind its batch: a thread made idle cannot be made normal again.
        batcher, decoder = self._background if request.background else (self.batcher, self._decoder)
        if decoder.idle and batcher.idle:
            return await self._answer_alone(request, place, started, batcher)
        try:
            features = await decoder.run(
                functools.partial(self._preprocess, request.item),
                request.priority,
                request.deadline,
            )
        finally:
            place.release()
        decoded = time.perf_counter()
        with self._counting_expired():
            batched = await batcher.submit(
                Item(features, request.options),
                request.priority,
                request.deadline,
                admitted=True,
            )
        return self._answered(batched, (decoded - started) * 1000, started)

    async def _answer_alone(
        self, request: Request, place: Place, started: float, batcher: DynamicBatcher[Item, Answer]
    ) -> Answered:
        """Preprocesses and runs ``request`` in one batch thread: a lone request on an idle model.

        Through the decode queue it would cross threads twice (a decode thread, back to the
        event loop, the batch's thread, back): at one client about 0.2 ms of hand-offs for
        nothing, since no other input is there to batch with or to decode meanwhile. Inputs
        that arrive while it runs take the usual path. ``batcher`` is the request's own (a batch
        job's input stays on its lowest-priority threads).
        """
        place.release()  # in the batching queue from here: its bound counts it there
        item, options = request.item, request.options
        with self._counting_expired():
            batched = await batcher.submit_prepared(
                lambda: Item(self._preprocess(item), options), request.priority, request.deadline
            )
        return self._answered(batched, batched.prepare_ms, started)

    @contextlib.contextmanager
    def _counting_expired(self) -> Iterator[None]:
        """Counts an input whose deadline passed while it waited for its batch."""
        try:
            yield
        except DeadlineExceeded:
            metrics.ITEMS.labels(self.name, "expired").inc()
            raise

    @staticmethod
    def _answered(batched: Batched[Answer], decode_ms: float, started: float) -> Answered:
        return Answered(
            batched.output,
            Timing(
                decode_ms=decode_ms,
                queue_ms=batched.queue_ms,
                inference_ms=batched.inference_ms,
                batch_size=batched.batch_size,
                total_ms=(time.perf_counter() - started) * 1000,
            ),
        )


class Unserved(Served):
    """A configured model that does not serve: still loading, failed (with the reason) or unloaded."""

    def __init__(self, config: ModelConfig, state: int, message: str = "") -> None:
        super().__init__(config)
        self.state = state
        self.message = message

    def describe(self) -> model_pb2.Model:
        """Name, version, state and why."""
        return model_pb2.Model(
            name=f"models/{self.name}",
            ready=False,
            state=self.state,  # type: ignore[arg-type]
            state_message=self.message,
            version=self.config.version,
            members=[f"models/{m}" for m in self.config.members],
        )

    async def answer(self, request: Request, place: Place | None = None) -> Answered:
        """Refuses: the model is not serving."""
        raise self.unavailable()

    def unavailable(self) -> FerryError:
        """The error a call to this model gets."""
        if self.state == UNLOADED:
            version = self.config.version
            return FailedPrecondition(
                f"model {self.name!r} version {version!r} is not loaded; load it with "
                f"`ferry models load {self.name}:{version}` or POST /v1/models/{self.name}:load "
                f'{{"version": "{version}"}}',
                "MODEL_NOT_LOADED",
                {"model": self.name, "version": version},
            )
        if self.state == FAILED:
            return Unavailable(
                f"model {self.name!r} failed to load: {self.message}",
                "MODEL_FAILED",
                {"model": self.name},
            )
        return Unavailable(
            f"model {self.name!r} is still loading; retry in a few seconds",
            "MODEL_LOADING",
            {"model": self.name},
        )


def _tensor_metadata(info: Any) -> model_pb2.TensorMetadata:
    return model_pb2.TensorMetadata(name=info.name, datatype=info.datatype, shape=list(info.shape))


def _invalid_message(index: int, err: ValueError) -> str:
    reason = getattr(err, "reason", "")
    if reason == InvalidImage.reason:
        return (
            f"input {index} is not a decodable image ({err}); "
            f"send the encoded file of a {ACCEPTED_FORMATS_TEXT} picture as the image content"
            " (base64 in JSON)"
        )
    return f"input {index} is refused: {err}"
