"""Models at runtime, from the gateway: load, unload and list them on inference (admin scope).

Serves ``ModelService.LoadModel``/``UnloadModel`` and the Open Inference Protocol's repository
extension (gRPC and REST) alike. Inference does the work (``services/inference/repository.py``);
the gateway names the model, waits for the answer with a deadline long enough for a model to load
and warm up, and refreshes its catalog so that the next call sees the new state.
"""

from __future__ import annotations

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common import validation
from services.common.downstream import Backend
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

    async def load(self, name: str, field: str = "name", version: str = "") -> model_pb2.Model:
        """Loads model ``name`` (``models/x`` or ``x``) at ``version`` (empty: its default); returns it READY.

        Raises:
            FerryError: INVALID_MODEL_NAME, MODEL_NOT_FOUND (not configured), MODEL_VERSION_NOT_FOUND,
                MODEL_LOAD_FAILED (why).
        """
        model = validation.model_id(name, field=field)
        version = validation.model_version(version, model)
        request = inference_service_pb2.LoadModelRequest(model=model, version=version)
        try:
            answer: inference_service_pb2.LoadModelResponse = await self._backend.call(
                self._inference.LoadModel, request
            )
        finally:
            self._catalog.invalidate()  # loaded, or FAILED with the reason: either way, new
        return answer.model

    async def unload(self, name: str, field: str = "name", version: str = "") -> model_pb2.Model:
        """Unloads model ``name`` at ``version`` (empty: every version); returns it. Ensembles and
        notebooks that call it stay loaded and answer MODEL_NOT_LOADED naming it.

        Raises:
            FerryError: INVALID_MODEL_NAME, MODEL_NOT_FOUND, MODEL_VERSION_NOT_FOUND.
        """
        model = validation.model_id(name, field=field)
        version = validation.model_version(version, model)
        request = inference_service_pb2.UnloadModelRequest(model=model, version=version)
        try:
            answer: inference_service_pb2.UnloadModelResponse = await self._backend.call(
                self._inference.UnloadModel, request
            )
        finally:
            self._catalog.invalidate()
        return answer.model

    async def set_default(self, name: str, version: str) -> model_pb2.Model:
        """Makes loaded ``version`` of ``name`` the one calls naming no version get; returns the model.

        Raises:
            FerryError: INVALID_MODEL_NAME, INVALID_MODEL_VERSION, MODEL_NOT_FOUND,
                MODEL_VERSION_NOT_FOUND, MODEL_NOT_LOADED (load that version first).
        """
        model = validation.model_id(name, field="name")
        request = inference_service_pb2.SetDefaultVersionRequest(
            model=model, version=validation.model_version(version, model, required=True)
        )
        try:
            answer: inference_service_pb2.SetDefaultVersionResponse = await self._backend.call(
                self._inference.SetDefaultVersion, request
            )
        finally:
            self._catalog.invalidate()
        return answer.model

    async def index(self) -> list[model_pb2.Model]:
        """Every configured model with its versions, states and reasons, fresh from inference."""
        self._catalog.invalidate()
        return await self._catalog.served()
