"""Synchronous predictions: run one input through inference, then record it before answering."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import grpc

from ferry.events.v1 import events_pb2
from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_service_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common import fetcher, validation
from services.common.answers import copy_answer
from services.common.downstream import Backend, publishing
from services.common.errors import FerryError, error_from_status
from services.common.ids import prediction_id_for_request
from services.common.tracing import current_trace_id
from services.gateway.catalog import ModelCatalog
from services.gateway.idempotency import Edge, new_id
from services.gateway.record_batches import RecordBatcher
from services.gateway.request_ids import RequestIds, digest
from services.gateway.settings import GatewaySettings


def new_prediction(
    record_id: uuid.UUID, model: str, source: prediction_pb2.PredictionSource
) -> prediction_pb2.Prediction:
    """A SUCCEEDED prediction of ``model`` made now, in this trace, without its answer yet."""
    prediction = prediction_pb2.Prediction(
        name=f"predictions/{record_id}",
        model=validation.model_name(model),
        state=prediction_pb2.PREDICTION_STATE_SUCCEEDED,
        trace_id=current_trace_id(),
        source=source,
    )
    prediction.create_time.GetCurrentTime()
    return prediction


class Predictor:
    """Runs ``ModelService.Predict`` for a tenant."""

    def __init__(
        self,
        settings: GatewaySettings,
        inference: inference_service_pb2_grpc.InferenceServiceStub,
        backend: Backend,
        catalog: ModelCatalog,
        records: RecordBatcher,
        request_ids: RequestIds,
    ) -> None:
        self._settings = settings
        self.request_ids = request_ids
        """Where a request_id remembers its request (BatchPredict and ModelInfer use it too)."""
        self._inference = inference
        self._backend = backend
        self._catalog = catalog
        self._records = records
        # Built once: a fetcher parses its allow-list of networks (~40-80 µs), too much per call.
        self.fetcher = fetcher.fetcher_for(settings, settings.max_image_bytes)

    async def predict(
        self,
        tenant: str,
        request: model_service_pb2.PredictRequest,
        started: float,
        edge: Edge | None = None,
    ) -> prediction_pb2.Prediction:
        """Predicts, records and returns the prediction; answered only once it will be stored.

        With a ``request_id`` the prediction's id is derived from it, so a client retrying after
        an error (or a lost answer) gets a prediction of the same name and one record. Without one,
        ``edge`` (see ``idempotency``) does the same for the edge's own resends.

        Args:
            tenant: the caller's tenant.
            request: the public request.
            started: ``time.perf_counter()`` when the request reached the gateway.

        Raises:
            FerryError: the request is invalid, the model unknown, the input not predictable
                (the input's own error, for example INVALID_ARGUMENT for bytes that are not an
                image), or inference or JetStream unavailable.
        """
        s = self._settings
        model = validation.model_id(request.model)
        top_k = validation.top_k(request.top_k, s.default_top_k, s.max_top_k)
        request_id = validation.request_id(request.request_id)
        if request.HasField("image") and request.image.uri:  # an image by URL is fetched here, once
            await fetcher.inline_images([(request.image, "image")], self.fetcher)
        item = validation.predict_input(request, s.max_image_bytes)

        version = validation.model_version(request.version, model)
        # The priority is left out: it orders the work, it does not change the answer.
        claim = self.request_ids.claim(
            "predict", tenant, request_id, digest("predict", (model, version, top_k, item))
        )
        try:  # the claim runs beside inference; it must hold before anything is recorded
            result = (await self.run_inputs(model, [item], top_k, request.priority, version))[0]
            if result.HasField("error") and result.error.code != grpc.StatusCode.OK.value[0]:
                raise error_from_status(result.error)
            await claim.held()
        except BaseException as err:
            await claim.settle(err)
            raise

        prediction_id = (
            prediction_id_for_request(tenant, request_id)
            if request_id
            else new_id("prediction", tenant, edge)
        )
        # SYNC: as the record says when read back.
        prediction = new_prediction(prediction_id, model, prediction_pb2.PREDICTION_SOURCE_SYNC)
        copy_answer(prediction, result)
        # Measured up to here so the returned and the recorded prediction agree.
        prediction.timing.total_ms = (time.perf_counter() - started) * 1000.0
        await self.record(tenant, prediction)
        return prediction

    async def run_many(
        self, model: str, images: Sequence[bytes], top_k: int, priority: types_pb2.Priority
    ) -> list[inference_service_pb2.PredictResult]:
        """Runs ``model`` on encoded ``images`` in one inference call; one result (or error) each.

        Raises:
            FerryError: the model is not served (NOT_FOUND naming the served ones), or an outage.
        """
        inputs = [types_pb2.Input(image=types_pb2.Image(content=image)) for image in images]
        return await self.run_inputs(model, inputs, top_k, priority)

    async def run_inputs(
        self,
        model: str,
        inputs: Sequence[types_pb2.Input],
        top_k: int,
        priority: types_pb2.Priority,
        version: str = "",
    ) -> list[inference_service_pb2.PredictResult]:
        """Runs ``model`` (at ``version``; empty: its default) on ``inputs`` (images, texts, payloads,
        tensors) in one inference call; each result names the version that answered.

        Raises:
            FerryError: the model is not served (NOT_FOUND naming the served ones), or an outage.
        """
        # The priority passes through as sent: inference validates it and orders its queues by it.
        request = inference_service_pb2.PredictRequest(
            model=model, inputs=inputs, top_k=top_k, priority=priority, version=version
        )
        try:
            answer: inference_service_pb2.PredictResponse = await self._backend.call(
                self._inference.Predict, request
            )
        except FerryError as err:
            if err.code == grpc.StatusCode.NOT_FOUND and err.reason == "MODEL_NOT_FOUND":
                raise await self._catalog.not_found(model) from None
            raise
        if len(answer.results) != len(inputs):
            raise FerryError(
                f"inference returned {len(answer.results)} results for {len(inputs)} inputs; retry, and "
                f"report it with trace id {current_trace_id()} if it persists",
                reason="BACKEND_ERROR",
            )
        return list(answer.results)

    async def record(self, tenant: str, prediction: prediction_pb2.Prediction) -> None:
        """Publishes ``prediction``'s record and returns once JetStream stored it.

        Raises:
            FerryError: UNAVAILABLE when JetStream did not acknowledge it within the budget.
        """
        # The answer waits for JetStream's ack of the record's batch: a prediction is only
        # returned once it will be stored.
        event = events_pb2.PredictionRecorded(tenant=tenant, prediction=prediction)
        async with publishing("the prediction could not be recorded"):
            await self._records.record(event)
