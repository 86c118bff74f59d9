"""GetModelStats of a model nobody recorded: zeros when the model is served or was recorded, else
404 MODEL_NOT_FOUND naming the served models (a mistyped name used to answer zeros)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ferry.models.v1 import model_service_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common.channels import open_channel
from services.common.downstream import Backend
from services.common.errors import FerryError
from services.gateway.records import Records
from services.gateway.servicers.models import known_model
from tests.gateway.servers import serving
from tests.gateway.test_catalog import Inference, catalog_of


class Store(store_service_pb2_grpc.StoreServiceServicer):
    """Records of tenant "t": predictions of ``recorded`` models, and stats of none in the window."""

    def __init__(self, recorded: set[str]) -> None:
        self.recorded = recorded

    async def ListPredictions(
        self, request: store_service_pb2.ListPredictionsRequest, context: Any
    ) -> store_service_pb2.ListPredictionsResponse:
        found = request.tenant == "t" and request.model in self.recorded
        return store_service_pb2.ListPredictionsResponse(
            predictions=[prediction_pb2.Prediction(name="predictions/x")] if found else []
        )

    async def GetModelStats(
        self, request: store_service_pb2.GetModelStatsRequest, context: Any
    ) -> store_service_pb2.GetModelStatsResponse:
        return store_service_pb2.GetModelStatsResponse()


@contextlib.asynccontextmanager
async def records_of(store: Store) -> AsyncIterator[Records]:
    async with serving(
        lambda s: store_service_pb2_grpc.add_StoreServiceServicer_to_server(store, s)
    ) as target:
        channel = open_channel(target, 1024 * 1024)
        yield Records(store_service_pb2_grpc.StoreServiceStub(channel), Backend("store", channel, 5.0))


async def test_stats_name_a_model_served_or_recorded_else_not_found() -> None:
    inference = Inference()  # serves models/a
    async with catalog_of(inference, ttl_s=60.0) as catalog, records_of(Store({"retired"})) as records:
        stats = await records.model_stats("t", model_service_pb2.GetModelStatsRequest(name="models/a"))
        assert stats.request_count == 0 and stats.model == "models/a"
        await known_model(catalog, records, "t", "a")  # served, no records lately: zeros are true
        await known_model(catalog, records, "t", "retired")  # unloaded, its records still readable
        with pytest.raises(FerryError) as refused:
            await known_model(catalog, records, "t", "resnet")
        assert refused.value.reason == "MODEL_NOT_FOUND"
        assert "available models: 'models/a'" in str(refused.value)
        with pytest.raises(FerryError):  # another tenant's records do not make it known
            await known_model(catalog, records, "u", "retired")
