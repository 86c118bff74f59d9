"""gRPC handlers of ferry.inference.v1.InferenceService: validate, convert, hand off to the core."""

from __future__ import annotations

import time
from typing import Any

import grpc

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common import limits
from services.common.errors import InvalidArgument, Unavailable
from services.common.readiness import RETRY_AFTER_S
from services.inference.calls import Call
from services.inference.models.contract import Options
from services.inference.protos import call_inputs, predict_result
from services.inference.repository import ModelRepository
from services.inference.scheduling import priority_from_proto
from services.inference.served import Served


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Answers ListModels and Predict from the models loaded at start."""

    def __init__(self, repository: ModelRepository) -> None:
        # The repository's entries are filled in by the service's start(); handlers only read them.
        self._repository = repository

    async def LoadModel(
        self,
        request: inference_service_pb2.LoadModelRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_service_pb2.LoadModelResponse:
        """Loads a configured model off the serving path (see ``repository``)."""
        repository = self._started()
        served = await repository.load(request.model, request.version, record=True)
        return inference_service_pb2.LoadModelResponse(model=self._describe(served, request.version))

    async def UnloadModel(
        self,
        request: inference_service_pb2.UnloadModelRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_service_pb2.UnloadModelResponse:
        """Stops serving a model and gives its memory back (see ``repository``)."""
        unloaded = await self._started().unload(request.model, request.version, record=True)
        return inference_service_pb2.UnloadModelResponse(model=self._describe(unloaded, ""))

    async def SetDefaultVersion(
        self,
        request: inference_service_pb2.SetDefaultVersionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_service_pb2.SetDefaultVersionResponse:
        """Makes a loaded version the one calls naming no version go to (see ``repository``)."""
        served = await self._started().set_default(request.model, request.version, record=True)
        return inference_service_pb2.SetDefaultVersionResponse(model=self._describe(served, ""))

    def _started(self) -> ModelRepository:
        """The repository, once the service's start has set up every model it starts with.

        Raises:
            Unavailable: NOT_READY while the start still loads them (calls are answered early:
                ``InferenceService.start``); the gateway retries it within its deadline.
        """
        if not self._repository.started:
            raise Unavailable(
                f"inference is still loading the models it starts with; retry in {RETRY_AFTER_S:g} s",
                "NOT_READY",
                {"service": "inference", "retry_after_s": f"{RETRY_AFTER_S:g}"},
            )
        return self._repository

    def _describe(self, served: Served, version: str) -> model_pb2.Model:
        """The model with its versions; described by ``version`` when one was named."""
        model = self._repository.describe(served.name)
        if version:  # the version the caller acted on, with the list of every version
            named = served.describe()
            named.versions.extend(model.versions)
            named.default_version = model.default_version
            return named
        return model

    async def ListModels(
        self,
        request: inference_service_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_service_pb2.ListModelsResponse:
        """Returns the configured models (loading, ready or failed), sorted by name."""
        return inference_service_pb2.ListModelsResponse(
            models=[self._repository.describe(name) for name in self._repository.names()]
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
        model = self._model(request.model, request.version)
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
        priority = priority_from_proto(request.priority, request.job_item)
        # Inputs still queued when the caller's deadline passes are dropped, never computed.
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        options = Options(top_k=request.top_k)
        call = Call(call_inputs(request.inputs), options, priority, deadline, request.job_item)
        results = [predict_result(outcome) for outcome in await model.predict(call)]
        for result in results:
            result.model_version = model.config.version
        return inference_service_pb2.PredictResponse(results=results)

    def _model(self, name: str, version: str) -> Served:
        """The entry this call goes to, taken once: a default moved meanwhile changes later calls only.

        Raises:
            FerryError: an unknown model or version, or one that is not serving.
        """
        return self._repository.served(name, version)  # accepts the resource name too ("models/x")
