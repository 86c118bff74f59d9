"""The model catalog's cache: one call to inference serves many, and a miss refreshes it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common.channels import open_channel
from services.common.downstream import Backend
from services.common.errors import FerryError
from services.gateway import catalog
from services.gateway.catalog import ModelCatalog
from tests.gateway.servers import serving


class Inference(inference_service_pb2_grpc.InferenceServiceServicer):
    """ListModels over ``names``; counts calls."""

    def __init__(self) -> None:
        self.names = ["models/a"]
        self.calls = 0

    async def ListModels(
        self, request: inference_service_pb2.ListModelsRequest, context: Any
    ) -> inference_service_pb2.ListModelsResponse:
        self.calls += 1
        return inference_service_pb2.ListModelsResponse(models=[model_pb2.Model(name=n) for n in self.names])


async def test_the_list_is_reused_and_refreshed_when_a_model_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inference = Inference()
    async with serving(
        lambda s: inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(inference, s)
    ) as target:
        channel = open_channel(target, 1024 * 1024)
        models = ModelCatalog(
            inference_service_pb2_grpc.InferenceServiceStub(channel),
            Backend("inference", channel, 5.0),
            ttl_s=3600,
        )
        answers = await asyncio.gather(*(models.served() for _ in range(20)))
        assert {tuple(m.name for m in a) for a in answers} == {("models/a",)}
        assert (await models.get("a")).name == "models/a"
        assert inference.calls == 1  # concurrent callers shared one call; later ones used the copy

        inference.names = ["models/a", "models/b"]  # a model loaded since
        monkeypatch.setattr(catalog, "MIN_REFRESH_S", 0.0)
        assert (await models.get("b")).name == "models/b"
        assert inference.calls == 2
        with pytest.raises(FerryError) as caught:
            await models.get("c")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert "'models/a', 'models/b'" in caught.value.message

        inference.names = ["models/b"]  # inference says a is gone: the list is refreshed
        error = await models.not_found("a")
        assert "'models/a'" not in error.message.split("available models:")[1]
        await channel.close()
