"""The served models, as inference reports them."""

from __future__ import annotations

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common.errors import NotFound
from services.gateway.downstream import Backend
from services.gateway.validation import model_name


class ModelCatalog:
    """Lists and finds models by asking inference (no cache: the list is small and cheap)."""

    def __init__(self, inference: inference_service_pb2_grpc.InferenceServiceStub, backend: Backend) -> None:
        self._inference = inference
        self._backend = backend

    async def served(self) -> list[model_pb2.Model]:
        """Returns the served models, sorted by name."""
        answer: inference_service_pb2.ListModelsResponse = await self._backend.call(
            self._inference.ListModels, inference_service_pb2.ListModelsRequest()
        )
        return sorted(answer.models, key=lambda m: m.name)

    async def get(self, model: str) -> model_pb2.Model:
        """Returns the model with id ``model``.

        Raises:
            NotFound: no such model; the message names the served ones.
        """
        models = await self.served()
        for found in models:
            if found.name == model_name(model):
                return found
        raise self._not_found(model, models)

    async def not_found(self, model: str) -> NotFound:
        """The NOT_FOUND error for ``model``, naming the models that are served."""
        return self._not_found(model, await self.served())

    @staticmethod
    def _not_found(model: str, models: list[model_pb2.Model]) -> NotFound:
        served = ", ".join(repr(m.name) for m in models) or "none (inference has no model loaded)"
        return NotFound(
            f"model {model_name(model)!r} is not served; available models: {served}",
            reason="MODEL_NOT_FOUND",
            metadata={"model": model_name(model)},
        )
