"""``ferry.models.v1.ModelService`` handlers."""

from __future__ import annotations

import time

import grpc

from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc
from services.common import paging, validation
from services.common.errors import NotFound, Unavailable
from services.gateway import identity
from services.gateway.batch_predictor import BatchPredictor
from services.gateway.catalog import ModelCatalog
from services.gateway.components import ComponentsSlot
from services.gateway.idempotency import Edge
from services.gateway.records import Records

Context = grpc.aio.ServicerContext[object, object]


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """Lists the served models and runs synchronous predictions."""

    def __init__(self, slot: ComponentsSlot) -> None:
        self._slot = slot

    async def ListModels(
        self, request: model_service_pb2.ListModelsRequest, context: Context
    ) -> model_service_pb2.ListModelsResponse:
        c = self._slot.get()
        limit = paging.page_size(request.page_size)
        after = paging.decode_page_token(request.page_token).get("after", "")
        if not isinstance(after, str):
            raise paging.bad_page_token()
        # The catalog is small and sorted by name: a page is the names after the last one shown.
        remaining = [model for model in await c.catalog.served() if model.name > after]
        page = remaining[:limit]
        more = len(remaining) > limit
        return model_service_pb2.ListModelsResponse(
            models=page,
            next_page_token=paging.encode_page_token({"after": page[-1].name}) if more else "",
        )

    async def GetModel(
        self, request: model_service_pb2.GetModelRequest, context: Context
    ) -> model_service_pb2.GetModelResponse:
        c = self._slot.get()
        model = validation.model_id(request.name, field="name")
        return model_service_pb2.GetModelResponse(model=await c.catalog.get(model))

    async def Predict(
        self, request: model_service_pb2.PredictRequest, context: Context
    ) -> model_service_pb2.PredictResponse:
        started = time.perf_counter()
        c = self._slot.get()
        tenant = identity.tenant()
        return model_service_pb2.PredictResponse(
            prediction=await c.predictor.predict(
                tenant, request, started, Edge.of(context.invocation_metadata())
            )
        )

    async def BatchPredict(
        self, request: model_service_pb2.BatchPredictRequest, context: Context
    ) -> model_service_pb2.BatchPredictResponse:
        started = time.perf_counter()
        c = self._slot.get()
        batch = BatchPredictor(c.settings, c.predictor, c.catalog)
        predictions = await batch.predict(
            identity.tenant(), request, started, Edge.of(context.invocation_metadata())
        )
        return model_service_pb2.BatchPredictResponse(predictions=predictions)

    async def LoadModel(
        self, request: model_service_pb2.LoadModelRequest, context: Context
    ) -> model_service_pb2.LoadModelResponse:
        models = self._slot.get().models
        loaded = await models.load(request.name, version=request.version)
        return model_service_pb2.LoadModelResponse(model=loaded)

    async def UnloadModel(
        self, request: model_service_pb2.UnloadModelRequest, context: Context
    ) -> model_service_pb2.UnloadModelResponse:
        models = self._slot.get().models
        return model_service_pb2.UnloadModelResponse(
            model=await models.unload(request.name, version=request.version)
        )

    async def SetDefaultVersion(
        self, request: model_service_pb2.SetDefaultVersionRequest, context: Context
    ) -> model_service_pb2.SetDefaultVersionResponse:
        models = self._slot.get().models
        return model_service_pb2.SetDefaultVersionResponse(
            model=await models.set_default(request.name, request.version)
        )

    async def GetModelStats(
        self, request: model_service_pb2.GetModelStatsRequest, context: Context
    ) -> model_service_pb2.GetModelStatsResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        stats = await c.records.model_stats(tenant, request)
        if stats.request_count == 0:
            await known_model(c.catalog, c.records, tenant, validation.model_id(request.name, field="name"))
        return model_service_pb2.GetModelStatsResponse(stats=stats)


async def known_model(catalog: ModelCatalog, records: Records, tenant: str, model: str) -> None:
    """Refuses stats of a model that is neither served nor in the caller's records: zeros there
    read as "nobody used it lately" when the name was mistyped (`ferry stats resnet`). A model
    served now (zeros are the truth) or one retired with records left (still readable) passes.

    Raises:
        NotFound: MODEL_NOT_FOUND naming the served models, as GetModel's.
    """
    try:
        await catalog.get(model)
    except NotFound as missing:
        if not await records.has_records(tenant, model):
            raise missing from None
    except Unavailable:
        pass  # inference is down: stats come from store, which cannot tell; answer them
