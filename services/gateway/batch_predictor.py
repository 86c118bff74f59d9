"""``ModelService.BatchPredict``: several inputs of one model in one call, each answered in order.

The inputs go to inference as one request (they batch together in the model's queue), and every
answer is recorded like a ``Predict``'s before the call returns. An input that cannot be predicted
(empty, too large, not decodable, of a kind the model does not take) gets its own FAILED prediction with the
error saying why, recorded too, while the other inputs still answer: a client sending 64 photos
does not lose 63 answers to one bad file. Problems of the call itself (unknown model, too many
inputs, a bad ``top_k``, an outage) fail the whole call as a ``Predict`` would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import grpc

from ferry.models.v1 import model_service_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common import fetcher, validation
from services.common.answers import copy_answer
from services.common.errors import FerryError, InvalidArgument
from services.common.ids import prediction_id_for_request
from services.gateway.catalog import ModelCatalog
from services.gateway.idempotency import Edge, new_id
from services.gateway.predictor import Predictor, new_prediction
from services.gateway.request_ids import Part, digest
from services.gateway.settings import GatewaySettings

_OK = grpc.StatusCode.OK.value[0]


def input_count(inputs: Sequence[types_pb2.Input], max_inputs: int) -> None:
    """Checks the number of inputs of one call.

    Raises:
        InvalidArgument: none, or more than ``max_inputs``.
    """
    if not 1 <= len(inputs) <= max_inputs:
        raise InvalidArgument(
            f"BatchPredict takes 1 to {max_inputs} inputs and this call has {len(inputs)}; "
            "split larger sets into several calls, or submit a job (POST /v1/jobs) for thousands",
            reason="TOO_MANY_INPUTS" if inputs else "NO_INPUTS",
            metadata={"field": "inputs", "inputs": str(len(inputs)), "max_inputs": str(max_inputs)},
        )


def item_record_id(kind: str, tenant: str, request_id: str, edge: Edge | None, index: int) -> uuid.UUID:
    """The record id of item ``index`` of a call that answers several (BatchPredict, ModelInfer).

    A repeated call (same ``request_id``, or the edge's resend of it) lands on the same records;
    ``kind`` keeps the ids of different APIs apart.
    """
    if request_id:
        return prediction_id_for_request(tenant, f"{kind}:{request_id}:{index}")
    return new_id(kind, tenant, edge, str(index))


class BatchPredictor:
    """Runs ``BatchPredict`` for a tenant with the gateway's ``Predictor`` (inference and records)."""

    def __init__(self, settings: GatewaySettings, predictor: Predictor, catalog: ModelCatalog) -> None:
        self._settings = settings
        self._predictor = predictor
        self._catalog = catalog

    async def predict(
        self,
        tenant: str,
        request: model_service_pb2.BatchPredictRequest,
        started: float,
        edge: Edge | None = None,
    ) -> list[prediction_pb2.Prediction]:
        """Predicts and records every input; returns one prediction per input, in order.

        With a ``request_id`` the predictions' ids derive from it and the input's position, so a
        retried call gets the same names and records nothing twice.

        Raises:
            FerryError: the call itself is wrong (model, top_k, request_id, input count), the
                model is not served (NOT_FOUND naming the served ones; nothing is recorded), or
                inference or JetStream is unavailable.
        """
        s = self._settings
        model = validation.model_id(request.model)
        top_k = validation.top_k(request.top_k, s.default_top_k, s.max_top_k)
        request_id = validation.request_id(request.request_id)
        version = validation.model_version(request.version, model)
        input_count(request.inputs, s.max_batch_predict_inputs)
        # Before any input is looked at: a call whose every input is refused would otherwise
        # record failed predictions of a model that does not exist (and answer 200).
        await self._catalog.get(model)

        # Images by URL are fetched here, once; one that cannot be is that input's own error.
        refused: dict[int, FerryError] = dict(
            await fetcher.inline_each(request.inputs, self._predictor.fetcher)
        )
        accepted: dict[int, types_pb2.Input] = {}
        for i, item in enumerate(request.inputs):
            if i in refused:
                continue
            try:
                accepted[i] = self._checked(item, i)
            except FerryError as err:
                refused[i] = err
        # Every input as sent (fetched), refused ones too: a retry must send the same ones.
        parts: list[Part] = [model, version, top_k, *request.inputs]
        claim = self._predictor.request_ids.claim("batch", tenant, request_id, digest("batch", parts))
        try:  # the claim runs beside inference; it must hold before anything is recorded
            results = (
                await self._predictor.run_inputs(
                    model, list(accepted.values()), top_k, request.priority, version
                )
                if accepted
                else []
            )
            await claim.held()
        except BaseException as err:
            await claim.settle(err)
            raise
        by_index = dict(zip(accepted, results, strict=True))
        # Inference numbers the inputs it was sent; after refusals those are not the caller's.
        position = {i: n for n, i in enumerate(accepted)}

        predictions = []
        for i in range(len(request.inputs)):
            record_id = item_record_id("batch", tenant, request_id, edge, i)
            prediction = new_prediction(record_id, model, prediction_pb2.PREDICTION_SOURCE_SYNC)
            if i in refused:
                prediction.state = prediction_pb2.PREDICTION_STATE_FAILED
                prediction.error.CopyFrom(refused[i].to_status())
            else:
                result = by_index[i]
                if result.HasField("error") and result.error.code != _OK:
                    prediction.state = prediction_pb2.PREDICTION_STATE_FAILED
                    prediction.error.CopyFrom(result.error)
                    message = result.error.message.replace(f"input {position[i]} ", "it ", 1)
                    prediction.error.message = f"inputs[{i}]: {message}"
                    prediction.timing.CopyFrom(result.timing)
                else:
                    copy_answer(prediction, result)
            prediction.timing.total_ms = (time.perf_counter() - started) * 1000.0
            predictions.append(prediction)
        # Recorded together (JetStream acks them in parallel); answered only once all are stored.
        await asyncio.gather(*(self._predictor.record(tenant, p) for p in predictions))
        return predictions

    def _checked(self, item: types_pb2.Input, index: int) -> types_pb2.Input:
        """One input, checked as a Predict checks its input; a problem is that input's own error."""
        return validation.input_item(item, self._settings.max_image_bytes, where=f"inputs[{index}]")
