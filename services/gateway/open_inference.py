"""The Open Inference Protocol (KServe V2, Triton's gRPC API) on Ferry's public port.

A Triton or KServe client points at Envoy's port and calls ``inference.GRPCInferenceService``
with the same API key as Ferry's own API. Inputs and outputs are described in ``oip_tensors``:
encoded images (``IMAGE``), UTF-8 texts (``TEXT``), JSON objects (``JSON``) or FP32 tensors
(``TENSOR``) in; classes, embeddings, JSON objects or tensors out, raw when the request was raw.
Request parameters: ``top_k`` (int), ``priority`` (``high``/``normal``/``low``, or Triton's
numbers: 1 is highest), ``timeout`` (microseconds), ``candidate_labels`` (texts: a JSON list or a
comma-separated string). Every item is recorded like a ``Predict`` (source OIP), and only when the
whole request succeeded: answer and record agree.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
from google.protobuf import unknown_fields

from ferry.inference.v1 import inference_service_pb2
from ferry.models.v1 import model_pb2
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common import nesting, priorities, validation
from services.common.answers import copy_answer
from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, error_from_status
from services.gateway.batch_predictor import item_record_id
from services.gateway.catalog import ModelCatalog
from services.gateway.idempotency import Edge
from services.gateway.oip_tensors import (
    CLASS_OUTPUTS,
    EMBEDDING_OUTPUT,
    IMAGE_INPUT,
    JSON_INPUT,
    JSON_OUTPUT,
    TENSOR_INPUT,
    TEXT_INPUT,
    check_request_size,
    inputs_of,
    output_tensors,
)
from services.gateway.predictor import Predictor, new_prediction
from services.gateway.request_ids import digest
from services.gateway.settings import GatewaySettings

SERVER_NAME = "ferry"
SERVER_VERSION = "0.1.0"
MODEL_VERSION = "1"
# Triton numbers priorities from 1 (highest); 0 means the default. 3 and above run as low here.
_TRITON_PRIORITIES = {
    0: types_pb2.PRIORITY_UNSPECIFIED,
    1: types_pb2.PRIORITY_HIGH,
    2: types_pb2.PRIORITY_NORMAL,
}
_TRITON_UINT64_FIELD = 5
#: Most digits of an integer parameter given as a string (an int64 has 19).
_MAX_DIGITS = 20
_VARINT = 0
#: A model input's name in Ferry's metadata -> the OIP input that carries it.
_INPUT_NAMES = {"image": IMAGE_INPUT, "text": TEXT_INPUT, "payload": JSON_INPUT}


def _triton_uint64(value: oip.InferParameter) -> int | None:
    """Triton's ``uint64_param`` (field 5, absent from KServe's proto that Ferry vendors unchanged).

    tritonclient sends its ``priority`` and ``timeout`` arguments in it; they arrive as an unknown
    field, which protobuf keeps.
    """
    found = unknown_fields.UnknownFieldSet(value)
    for field in (found[i] for i in range(len(found))):
        if field.field_number == _TRITON_UINT64_FIELD and field.wire_type == _VARINT:
            return int(field.data)
    return None


def _parameter_int(parameters: dict[str, oip.InferParameter], name: str) -> int | None:
    if name not in parameters:
        return None
    value = parameters[name]
    kind = value.WhichOneof("parameter_choice")
    if kind == "int64_param":
        return int(value.int64_param)
    if kind is None and (number := _triton_uint64(value)) is not None:
        return number
    digits = value.string_param.strip() if kind == "string_param" else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS:  # not '²', not 5,000 digits
        return int(digits)
    raise InvalidArgument(f"parameter {name!r} must be an integer", reason="INVALID_OIP_PARAMETER")


def priority_of(parameters: dict[str, oip.InferParameter]) -> types_pb2.Priority:
    """The ``priority`` parameter: high/normal/low, or Triton's numbers (1 highest, 0 default).

    Raises:
        InvalidArgument: any other value.
    """
    value = parameters.get("priority")
    if value is None:
        return types_pb2.PRIORITY_UNSPECIFIED
    if (
        value.WhichOneof("parameter_choice") == "string_param"
        and value.string_param.lower() in priorities.NAMES
    ):
        return priorities.of_name(value.string_param).proto
    try:
        number = _parameter_int(parameters, "priority")
    except InvalidArgument:
        number = None  # a word that is no priority ("urgent"): the answer below names them
    if number is None or number < 0:
        raise InvalidArgument(
            "parameter 'priority' is high, normal or low (or Triton's numbers: 1 highest, 2, 3)",
            "INVALID_OIP_PARAMETER",
        )
    return _TRITON_PRIORITIES.get(number, types_pb2.PRIORITY_LOW)


def candidate_labels_of(parameters: dict[str, oip.InferParameter]) -> list[str]:
    """The ``candidate_labels`` parameter: a JSON list of strings, or a comma-separated string.

    Raises:
        InvalidArgument: not a string parameter, or JSON that is not a list of strings.
    """
    value = parameters.get("candidate_labels")
    if value is None:
        return []
    text = value.string_param if value.WhichOneof("parameter_choice") == "string_param" else None
    labels: object = None
    if text is not None and text.lstrip().startswith("["):
        try:
            labels = nesting.loads(text)
        except ValueError:  # not JSON, or nested past the limit
            labels = None
    elif text is not None:
        labels = [label.strip() for label in text.split(",") if label.strip()]
    if not isinstance(labels, list) or not all(
        isinstance(label, str) and _encodable(label) for label in labels
    ):
        raise InvalidArgument(
            "parameter 'candidate_labels' is a string: a JSON list of labels or labels separated by commas",
            reason="INVALID_OIP_PARAMETER",
        )
    return labels


def _encodable(text: str) -> bool:
    """Whether ``text`` can be sent as a protobuf string (JSON's "\\ud800" decodes to a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def metadata_inputs(model: model_pb2.Model) -> list[oip.ModelMetadataResponse.TensorMetadata]:
    """The OIP inputs a model takes, from its own metadata (an image classifier also takes TENSOR)."""
    tensor = oip.ModelMetadataResponse.TensorMetadata
    inputs = [
        tensor(name=_INPUT_NAMES[i.name], datatype="BYTES", shape=[-1])
        for i in model.inputs
        if i.name in _INPUT_NAMES and i.datatype == "BYTES"
    ] or [tensor(name=IMAGE_INPUT, datatype="BYTES", shape=[-1])]
    if model.task == "image-classification":
        inputs.append(tensor(name=TENSOR_INPUT, datatype="FP32", shape=[-1, 3, -1, -1]))
    return inputs


def metadata_outputs(model: model_pb2.Model) -> list[oip.ModelMetadataResponse.TensorMetadata]:
    """The OIP outputs a model answers, from its own metadata (classes when it says nothing)."""
    tensor = oip.ModelMetadataResponse.TensorMetadata
    classes = [tensor(name=n, datatype=d, shape=[-1, -1]) for n, d in CLASS_OUTPUTS.items()]
    outputs = []
    for out in model.outputs:
        if out.name == "classes":
            outputs += classes
        elif out.name == "embedding":
            outputs.append(tensor(name=EMBEDDING_OUTPUT, datatype="FP32", shape=[-1, *out.shape]))
        elif out.name == "output":
            outputs.append(tensor(name=JSON_OUTPUT, datatype="BYTES", shape=[-1]))
        else:
            outputs.append(tensor(name=out.name, datatype=out.datatype, shape=[-1, *out.shape]))
    return outputs or classes


class OpenInference:
    """Answers the protocol's calls for a tenant, through inference and the gateway's recording."""

    def __init__(
        self,
        settings: GatewaySettings,
        catalog: ModelCatalog,
        predictor: Predictor,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._predictor = predictor

    async def server_ready(self) -> bool:
        """Ready when inference answers and serves at least one ready model."""
        models = await self._catalog.served()
        return any(model.ready for model in models)

    async def model_ready(self, name: str, version: str) -> bool:
        """Whether ``name`` (at ``version``; empty: its default) is served and ready.

        Raises:
            FerryError: NOT_FOUND for an unknown model or version.
        """
        model = await self._catalog.get(validation.model_id(name, field="name"))
        if not version:
            return bool(model.ready)
        return _version_of(model, version).state == model_pb2.MODEL_STATE_READY

    async def model_metadata(self, name: str, version: str) -> oip.ModelMetadataResponse:
        """The model's inputs and outputs as the protocol describes tensors, and its versions."""
        model = await self._catalog.get(validation.model_id(name, field="name"))
        if version:
            _version_of(model, version)
        return oip.ModelMetadataResponse(
            name=model.name.removeprefix(validation.MODEL_PREFIX),
            versions=[v.version for v in model.versions] or [model.version or MODEL_VERSION],
            platform="pytorch",
            inputs=metadata_inputs(model),
            outputs=metadata_outputs(model),
        )

    async def infer(
        self, tenant: str, request: oip.ModelInferRequest, edge: Edge | None = None
    ) -> oip.ModelInferResponse:
        """Runs ``request`` and records each element once the whole request succeeded.

        The records' ids come from the request's ``id``, else from ``edge`` (see ``idempotency``),
        so a repeated call records each element once.

        Raises:
            FerryError: a bad request (INVALID_ARGUMENT), an unknown model (NOT_FOUND), an image
                that does not decode (INVALID_ARGUMENT naming it), or an outage.
        """
        started = time.perf_counter()
        s = self._settings
        model = validation.model_id(request.model_name, field="model_name")
        version = validation.model_version(request.model_version, model, field="model_version")
        check_request_size(request)
        validation.request_id(request.id, field="id")  # it is claimed and echoed as a request_id is
        parameters = dict(request.parameters)
        top_k = validation.top_k(_parameter_int(parameters, "top_k") or 0, s.default_top_k, s.max_top_k)
        timeout_us = _parameter_int(parameters, "timeout")
        if timeout_us is not None and timeout_us < 0:  # not a deadline that passed: a bad request
            raise InvalidArgument(
                f"parameter 'timeout' is {timeout_us}; send microseconds, 0 or more (0: no timeout)",
                reason="INVALID_OIP_PARAMETER",
                metadata={"parameter": "timeout"},
            )
        inputs = inputs_of(request, s.max_image_bytes, candidate_labels_of(parameters))
        priority = priority_of(parameters)
        # The request's ``id`` names its records as a request_id does, so it is claimed as one;
        # priority, timeout and the outputs picked are left out: they do not change the answers.
        claim = self._predictor.request_ids.claim(
            "oip", tenant, request.id, digest("oip", (model, version, top_k, *inputs.items)), field="id"
        )
        call = self._predictor.run_inputs(model, inputs.items, top_k, priority, version)
        try:  # the claim runs beside inference; it must hold before anything is recorded
            try:
                results = await (asyncio.wait_for(call, timeout_us / 1e6) if timeout_us else call)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the request's timeout of {timeout_us} µs passed before inference answered",
                    reason="OIP_TIMEOUT",
                ) from None
            for i, result in enumerate(results):
                if result.HasField("error") and result.error.code != grpc.StatusCode.OK.value[0]:
                    error = error_from_status(result.error)
                    error.message = f"{request.inputs[0].name}[{i}]: {error.message}"
                    raise error
            await claim.held()
        except BaseException as err:
            await claim.settle(err)
            raise
        tensors, raw = output_tensors(results, [o.name for o in request.outputs], inputs.raw)
        predictions = [
            self._prediction(item_record_id("oip", tenant, request.id, edge, i), model, result, started)
            for i, result in enumerate(results)
        ]
        await asyncio.gather(*(self._predictor.record(tenant, p) for p in predictions))
        return oip.ModelInferResponse(
            model_name=model,
            model_version=results[0].model_version if results else version,
            id=request.id,
            outputs=tensors,
            raw_output_contents=raw,
        )

    @staticmethod
    def _prediction(
        record_id: uuid.UUID, model: str, result: inference_service_pb2.PredictResult, started: float
    ) -> prediction_pb2.Prediction:
        prediction = new_prediction(record_id, model, prediction_pb2.PREDICTION_SOURCE_OIP)
        copy_answer(prediction, result)
        prediction.timing.total_ms = (time.perf_counter() - started) * 1000.0
        return prediction


def _version_of(model: model_pb2.Model, version: str) -> model_pb2.ModelVersion:
    """``model``'s entry for ``version``.

    Raises:
        NotFound: MODEL_VERSION_NOT_FOUND, naming the model's versions.
    """
    versions = list(model.versions) or [model_pb2.ModelVersion(version=model.version, state=model.state)]
    found = next((v for v in versions if v.version == version), None)
    if found is None:
        name = model.name.removeprefix(validation.MODEL_PREFIX)
        raise NotFound(
            f"model {name!r} has no version {version!r}; its versions: "
            f"{', '.join(v.version for v in versions)}",
            reason="MODEL_VERSION_NOT_FOUND",
            metadata={"model": name, "version": version},
        )
    return found
