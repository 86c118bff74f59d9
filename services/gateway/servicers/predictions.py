"""``ferry.predictions.v1.PredictionService`` handlers."""

from __future__ import annotations

import grpc

from ferry.predictions.v1 import prediction_service_pb2, prediction_service_pb2_grpc
from services.gateway import identity
from services.gateway.components import ComponentsSlot

Context = grpc.aio.ServicerContext[object, object]


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Reads the caller's recorded predictions."""

    def __init__(self, slot: ComponentsSlot) -> None:
        self._slot = slot

    async def GetPrediction(
        self, request: prediction_service_pb2.GetPredictionRequest, context: Context
    ) -> prediction_service_pb2.GetPredictionResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        prediction = await c.records.get_prediction(tenant, request.name)
        return prediction_service_pb2.GetPredictionResponse(prediction=prediction)

    async def ListPredictions(
        self, request: prediction_service_pb2.ListPredictionsRequest, context: Context
    ) -> prediction_service_pb2.ListPredictionsResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return await c.records.list_predictions(tenant, request)
