"""``ferry.admin.v1.KeyService`` handlers (the admission interceptor lets only admin keys in)."""

from __future__ import annotations

import grpc

from ferry.admin.v1 import key_service_pb2, key_service_pb2_grpc
from services.gateway.components import ComponentsSlot

Context = grpc.aio.ServicerContext[object, object]


class KeyServicer(key_service_pb2_grpc.KeyServiceServicer):
    """Creates, lists and revokes API keys."""

    def __init__(self, slot: ComponentsSlot) -> None:
        self._slot = slot

    async def CreateKey(
        self, request: key_service_pb2.CreateKeyRequest, context: Context
    ) -> key_service_pb2.CreateKeyResponse:
        return await self._slot.get().keys.create(request)

    async def ListKeys(
        self, request: key_service_pb2.ListKeysRequest, context: Context
    ) -> key_service_pb2.ListKeysResponse:
        return await self._slot.get().keys.list(request)

    async def RevokeKey(
        self, request: key_service_pb2.RevokeKeyRequest, context: Context
    ) -> key_service_pb2.RevokeKeyResponse:
        return await self._slot.get().keys.revoke(request)
