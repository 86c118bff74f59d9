"""Models at runtime, from the gateway: load, unload and list them on inference (admin scope).

Serves ``ModelService.LoadModel``/``UnloadModel`` and the Open Inference Protocol's repository
extension (gRPC and REST) alike. Inference does the work (``services/inference/repository.py``);
the gateway names the model, waits for the answer with a deadline long enough for a model to load
and warm up, and refreshes its catalog so that the next call sees the new state.
"""

from __future__ import annotations

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common.downstream import Backend
from services.gateway import validation
from services.gateway.catalog import ModelCatalog

#: Triton's words for a model's state in the repository index, by Ferry's state.
INDEX_STATES = {
    model_pb2.MODEL_STATE_READY: "READY",
    model_pb2.MODEL_STATE_LOADING: "LOADING",
    model_pb2.MODEL_STATE_FAILED: "UNAVAILABLE",
    model_pb2.MODEL_STATE_UNLOADED: "UNAVAILABLE",
}


class ModelAdmin:
    """Loads and unloads models on inference and lists them with their states."""

    def __init__(
        self,
        inference: inference_service_pb2_grpc.InferenceServiceStub,
        backend: Backend,
        catalog: ModelCatalog,
    ) -> None:
        self._inference = inference
        self._backend = backend
        self._catalog = catalog

    async def load(self, name: str, field: str = "name") -> model_pb2.Model:
        """Loads model ``name`` (``models/x`` or ``x``); returns it READY.

        Raises:
            FerryError: INVALID_MODEL_NAME, MODEL_NOT_FOUND (not configured), MODEL_LOAD_FAILED (why).
        """
        model = validation.model_id(name, field=field)
        try:
            answer: inference_service_pb2.LoadModelResponse = await self._backend.call(
                self._inference.LoadModel, inference_service_pb2.LoadModelRequest(model=model)
            )
        finally:
            self._catalog.invalidate()  # loaded, or FAILED with the reason: either way, new
        return answer.model

    async def unload(self, name: str, field: str = "name") -> model_pb2.Model:
        """Unloads model ``name``; returns it UNLOADED.

        Raises:
            FerryError: INVALID_MODEL_NAME, MODEL_NOT_FOUND, MODEL_IN_USE (an ensemble calls it).
        """
        model = validation.model_id(name, field=field)
        try:
            answer: inference_service_pb2.UnloadModelResponse = await self._backend.call(
                self._inference.UnloadModel, inference_service_pb2.UnloadModelRequest(model=model)
            )
        finally:
            self._catalog.invalidate()
        return answer.model

    async def index(self, ready_only: bool = False) -> list[model_pb2.Model]:
        """Every configured model with its state and reason (only the ready ones if asked)."""
        self._catalog.invalidate()
        models = await self._catalog.served()
        return [m for m in models if m.ready or not ready_only]
