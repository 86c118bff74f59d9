"""The Open Inference Protocol's model repository extension over gRPC, as tritonclient calls it.

``RepositoryIndex``, ``RepositoryModelLoad`` and ``RepositoryModelUnload`` are methods of
``inference.GRPCInferenceService`` in Triton's definition but not in the protocol's that Ferry
vendors unchanged (protos/ferry/oip/v2/model_repository.proto says why), so they have no
generated servicer: this handler serves them under that service's name, with Triton's messages.
They pass the same interceptors as every method (admin scope, see ``identity``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ferry.models.v1 import model_pb2
from ferry.oip.v2 import model_repository_pb2 as repo
from services.common.validation import MODEL_PREFIX
from services.gateway.components import ComponentsSlot
from services.gateway.model_admin import INDEX_STATES, ModelAdmin
from services.gateway.open_inference import MODEL_VERSION

SERVICE = "inference.GRPCInferenceService"
Context = grpc.aio.ServicerContext[Any, Any]


def index_entries(model: model_pb2.Model) -> list[repo.RepositoryIndexResponse.ModelIndex]:
    """A model as the repository index lists it, one entry per version: Triton's state words,
    Ferry's reason."""
    versions = list(model.versions) or [
        model_pb2.ModelVersion(version=model.version, state=model.state, state_message=model.state_message)
    ]
    return [
        repo.RepositoryIndexResponse.ModelIndex(
            name=model.name.removeprefix(MODEL_PREFIX),
            version=v.version or MODEL_VERSION,
            state=INDEX_STATES.get(v.state, "UNAVAILABLE"),
            reason=v.state_message or ("unloaded" if v.state == model_pb2.MODEL_STATE_UNLOADED else ""),
        )
        for v in versions
    ]


async def index(models: ModelAdmin, ready_only: bool) -> list[repo.RepositoryIndexResponse.ModelIndex]:
    """Every model's versions as index entries; only the READY ones if asked."""
    entries = [e for m in await models.index() for e in index_entries(m)]
    return [e for e in entries if e.state == "READY" or not ready_only]


class OipRepository:
    """The three repository methods, against the gateway's ``ModelAdmin``."""

    def __init__(self, slot: ComponentsSlot) -> None:
        self._slot = slot

    async def index(
        self, request: repo.RepositoryIndexRequest, context: Context
    ) -> repo.RepositoryIndexResponse:
        return repo.RepositoryIndexResponse(models=await index(self._slot.get().models, request.ready))

    async def load(
        self, request: repo.RepositoryModelLoadRequest, context: Context
    ) -> repo.RepositoryModelLoadResponse:
        await self._slot.get().models.load(request.model_name, field="model_name")
        return repo.RepositoryModelLoadResponse()

    async def unload(
        self, request: repo.RepositoryModelUnloadRequest, context: Context
    ) -> repo.RepositoryModelUnloadResponse:
        await self._slot.get().models.unload(request.model_name, field="model_name")
        return repo.RepositoryModelUnloadResponse()


def _unary(
    handler: Callable[[Any, Context], Awaitable[Any]], request: Any, response: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=request.FromString, response_serializer=response.SerializeToString
    )


def add_to_server(slot: ComponentsSlot, server: grpc.aio.Server) -> None:
    """Serves the three methods under ``inference.GRPCInferenceService`` on ``server``."""
    methods = OipRepository(slot)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "RepositoryIndex": _unary(
                methods.index, repo.RepositoryIndexRequest, repo.RepositoryIndexResponse
            ),
            "RepositoryModelLoad": _unary(
                methods.load, repo.RepositoryModelLoadRequest, repo.RepositoryModelLoadResponse
            ),
            "RepositoryModelUnload": _unary(
                methods.unload, repo.RepositoryModelUnloadRequest, repo.RepositoryModelUnloadResponse
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
