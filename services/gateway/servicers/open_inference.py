"""``inference.GRPCInferenceService`` handlers: the Open Inference Protocol behind Ferry's API keys."""

from __future__ import annotations

import grpc

from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from services.gateway import identity
from services.gateway.components import ComponentsSlot
from services.gateway.idempotency import Edge
from services.gateway.open_inference import SERVER_NAME, SERVER_VERSION

Context = grpc.aio.ServicerContext[object, object]


class OpenInferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Serves Triton's and KServe's clients; every call needs the caller's API key."""

    def __init__(self, slot: ComponentsSlot) -> None:
        self._slot = slot

    async def ServerLive(self, request: oip.ServerLiveRequest, context: Context) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)  # answering at all is being live

    async def ServerReady(self, request: oip.ServerReadyRequest, context: Context) -> oip.ServerReadyResponse:
        c = self._slot.get()
        return oip.ServerReadyResponse(ready=await c.open_inference.server_ready())

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def ModelReady(self, request: oip.ModelReadyRequest, context: Context) -> oip.ModelReadyResponse:
        c = self._slot.get()
        return oip.ModelReadyResponse(ready=await c.open_inference.model_ready(request.name, request.version))

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        c = self._slot.get()
        return await c.open_inference.model_metadata(request.name, request.version)

    async def ModelInfer(self, request: oip.ModelInferRequest, context: Context) -> oip.ModelInferResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return await c.open_inference.infer(tenant, request, Edge.of(context.invocation_metadata()))
