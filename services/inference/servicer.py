"""gRPC handlers of ferry.inference.v1.InferenceService: validate, convert, hand off to the core."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import grpc

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from services.common import limits
from services.common.errors import InvalidArgument, NotFound
from services.inference.calls import Call
from services.inference.models.contract import Options
from services.inference.protos import call_inputs, predict_result
from services.inference.repository import ModelRepository
from services.inference.scheduling import priority_from_proto
from services.inference.served import Served, Unserved


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Answers ListModels and Predict from the models loaded at start."""

    def __init__(self, models: Mapping[str, Served], repository: ModelRepository | None = None) -> None:
        # The mapping is filled in by the service's start() and the repository; handlers only read it.
        self._models = models
        self._repository = repository

    async def LoadModel(
        self,
        request: inference_service_pb2.LoadModelRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_service_pb2.LoadModelResponse:
        """Loads a configured model off the serving path (see ``repository``)."""
        served = await self._repository_or_fail().load(request.model, record=True)
        return inference_service_pb2.LoadModelResponse(model=served.describe())

    async def UnloadModel(
        self,
        request: inference_service_pb2.UnloadModelRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_service_pb2.UnloadModelResponse:
        """Stops serving a model and gives its memory back (see ``repository``)."""
        unloaded = await self._repository_or_fail().unload(request.model, record=True)
        return inference_service_pb2.UnloadModelResponse(model=unloaded.describe())

    def _repository_or_fail(self) -> ModelRepository:
        if self._repository is None:
            raise RuntimeError("this servicer was built without a model repository")
        return self._repository

    async def ListModels(
        self,
        request: inference_service_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_service_pb2.ListModelsResponse:
        """Returns the configured models (loading, ready or failed), sorted by name."""
        return inference_service_pb2.ListModelsResponse(
            models=[self._models[name].describe() for name in sorted(self._models)]
        )

    async def Predict(
        self,
        request: inference_service_pb2.PredictRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_service_pb2.PredictResponse:
        """Runs one model on 1 to 256 inputs; each input gets a result or its own error.

        A full model queue fails the whole call at once with RESOURCE_EXHAUSTED (QUEUE_FULL); a
        model still loading, or that failed to load, fails it with UNAVAILABLE.
        """
        model = self._model(request.model)
        if isinstance(model, Unserved):
            raise model.unavailable()
        count = len(request.inputs)
        if not 1 <= count <= limits.MAX_INPUTS_PER_REQUEST:
            raise InvalidArgument(
                f"inputs has {count} items; send between 1 and {limits.MAX_INPUTS_PER_REQUEST} inputs per "
                "request "
                "(use a batch job for more)",
                "INVALID_INPUT_COUNT",
                {"count": str(count), "max": str(limits.MAX_INPUTS_PER_REQUEST)},
            )
        if not 1 <= request.top_k <= limits.MAX_TOP_K:
            raise InvalidArgument(
                f"top_k is {request.top_k}; it must be between 1 and {limits.MAX_TOP_K}",
                "INVALID_TOP_K",
                {"top_k": str(request.top_k)},
            )
        priority = priority_from_proto(request.priority)
        # Inputs still queued when the caller's deadline passes are dropped, never computed.
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        call = Call(call_inputs(request.inputs), Options(top_k=request.top_k), priority, deadline)
        return inference_service_pb2.PredictResponse(
            results=[predict_result(outcome) for outcome in await model.predict(call)]
        )

    def _model(self, name: str) -> Served:
        # Accept the resource name too ("models/x"), as ListModels hands it out.
        served = self._models.get(name.removeprefix("models/"))
        if served is None:
            available = ", ".join(sorted(self._models))
            raise NotFound(
                f"model {name!r} is not served here; available: {available}",
                "MODEL_NOT_FOUND",
                {"model": name},
            )
        return served
