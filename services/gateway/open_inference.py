"""The Open Inference Protocol (KServe V2, Triton's gRPC API) on Ferry's public port.

A Triton or KServe client points at Envoy's port and calls ``inference.GRPCInferenceService``
with the same API key as Ferry's own API. An image model takes one input, ``IMAGE``: BYTES of
shape ``[n]``, each element an encoded image (JPEG, PNG, ...), in ``contents.bytes_contents`` or
``raw_input_contents``. It answers ``LABELS`` (BYTES), ``SCORES`` (FP32) and ``CLASS_INDICES``
(INT64), each of shape ``[n, top_k]``, raw when the request was raw. Request parameters:
``top_k`` (int), ``priority`` (``high``/``normal``/``low``, or Triton's numbers: 1 is highest),
``timeout`` (microseconds). Every element is recorded like a ``Predict`` (source OIP), and only
when the whole request succeeded: answer and record agree.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from ferry.inference.v1 import inference_service_pb2
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, error_from_status
from services.common.ids import prediction_id_for_request
from services.common.tracing import current_trace_id
from services.gateway import validation
from services.gateway.catalog import ModelCatalog
from services.gateway.idempotency import Edge, new_id
from services.gateway.predictor import Predictor
from services.gateway.settings import GatewaySettings

SERVER_NAME = "ferry"
SERVER_VERSION = "0.1.0"
MODEL_VERSION = "1"
IMAGE_INPUT = "IMAGE"
OUTPUTS = {"LABELS": "BYTES", "SCORES": "FP32", "CLASS_INDICES": "INT64"}
#: Most elements in one ModelInfer (the inference service's limit per request).
MAX_ELEMENTS = 256
_PRIORITIES = {
    "high": types_pb2.PRIORITY_HIGH,
    "normal": types_pb2.PRIORITY_NORMAL,
    "low": types_pb2.PRIORITY_LOW,
}
# Triton numbers priorities from 1 (highest); 0 means the default. 3 and above run as low here.
_TRITON_PRIORITIES = {
    0: types_pb2.PRIORITY_UNSPECIFIED,
    1: types_pb2.PRIORITY_HIGH,
    2: types_pb2.PRIORITY_NORMAL,
}


def decode_bytes_tensor(raw: bytes) -> list[bytes]:
    """Splits a raw BYTES tensor: each element a 4-byte little-endian length, then its bytes.

    Raises:
        InvalidArgument: the buffer does not split into whole elements.
    """
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _bad_input("raw_input_contents[0] ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise _bad_input(
                "raw_input_contents[0] ends inside an element; each is a 4-byte length, then bytes"
            )
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def encode_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """The raw form of a BYTES tensor (see ``decode_bytes_tensor``)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _bad_input(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_OIP_INPUT", metadata={"input": IMAGE_INPUT})


def _parameter_int(parameters: dict[str, oip.InferParameter], name: str) -> int | None:
    if name not in parameters:
        return None
    value = parameters[name]
    kind = value.WhichOneof("parameter_choice")
    if kind == "int64_param":
        return int(value.int64_param)
    if kind == "string_param" and value.string_param.strip().isdigit():
        return int(value.string_param)
    raise InvalidArgument(f"parameter {name!r} must be an integer", reason="INVALID_OIP_PARAMETER")


def priority_of(parameters: dict[str, oip.InferParameter]) -> types_pb2.Priority:
    """The ``priority`` parameter: high/normal/low, or Triton's numbers (1 highest, 0 default).

    Raises:
        InvalidArgument: any other value.
    """
    value = parameters.get("priority")
    if value is None:
        return types_pb2.PRIORITY_UNSPECIFIED
    if value.WhichOneof("parameter_choice") == "string_param" and value.string_param.lower() in _PRIORITIES:
        return _PRIORITIES[value.string_param.lower()]
    number = _parameter_int(parameters, "priority")
    if number is None or number < 0:
        raise InvalidArgument(
            "parameter 'priority' is high, normal or low (or 1, 2, 3)", "INVALID_OIP_PARAMETER"
        )
    return _TRITON_PRIORITIES.get(number, types_pb2.PRIORITY_LOW)


@dataclass(frozen=True)
class Images:
    """The images of one ModelInfer and whether the client spoke raw tensors."""

    contents: list[bytes]
    raw: bool


def images_of(request: oip.ModelInferRequest, max_image_bytes: int) -> Images:
    """Reads the ``IMAGE`` input's elements, checked against its shape and the size limit.

    Raises:
        InvalidArgument: no IMAGE input, another datatype, a shape that does not match, no
            elements or too many, or an element that is empty or too large.
    """
    names = [tensor.name for tensor in request.inputs]
    if IMAGE_INPUT not in names:
        raise _bad_input(
            f"the request has inputs {names}; send one input named {IMAGE_INPUT!r} (BYTES, shape [n])"
        )
    index = names.index(IMAGE_INPUT)
    tensor = request.inputs[index]
    if tensor.datatype != "BYTES":
        raise _bad_input(f"input {IMAGE_INPUT!r} is {tensor.datatype}; it must be BYTES: encoded image files")
    raw = bool(request.raw_input_contents)
    if raw:
        if len(request.raw_input_contents) != len(request.inputs):
            raise _bad_input("raw_input_contents must hold one entry per input")
        contents = decode_bytes_tensor(request.raw_input_contents[index])
    else:
        contents = list(tensor.contents.bytes_contents)
    expected = int(np.prod(tensor.shape)) if tensor.shape else len(contents)
    if expected != len(contents):
        raise _bad_input(f"input {IMAGE_INPUT!r} has shape {list(tensor.shape)} but {len(contents)} elements")
    if not 1 <= len(contents) <= MAX_ELEMENTS:
        raise _bad_input(f"input {IMAGE_INPUT!r} has {len(contents)} elements; send 1 to {MAX_ELEMENTS}")
    for i, content in enumerate(contents):
        validation.image_content(
            types_pb2.Image(content=content), max_image_bytes, where=f"{IMAGE_INPUT}[{i}]"
        )
    return Images(contents, raw)


def output_tensors(
    results: Sequence[inference_service_pb2.PredictResult], wanted: Sequence[str], raw: bool
) -> tuple[list[oip.ModelInferResponse.InferOutputTensor], list[bytes]]:
    """Builds the requested outputs (all when ``wanted`` is empty) from per-element results."""
    names = list(wanted) or list(OUTPUTS)
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        raise InvalidArgument(
            f"unknown outputs {unknown}; this model answers {list(OUTPUTS)}", reason="INVALID_OIP_OUTPUT"
        )
    k = min(len(r.classes) for r in results)
    shape = [len(results), k]
    labels = [c.label.encode() for r in results for c in r.classes[:k]]
    scores = np.array([[c.score for c in r.classes[:k]] for r in results], dtype="<f4")
    indices = np.array([[c.index for c in r.classes[:k]] for r in results], dtype="<i8")
    tensors, raw_contents = [], []
    for name in names:
        tensor = oip.ModelInferResponse.InferOutputTensor(name=name, datatype=OUTPUTS[name], shape=shape)
        if raw:
            raw_contents.append(
                {
                    "LABELS": encode_bytes_tensor(labels),
                    "SCORES": scores.tobytes(),
                    "CLASS_INDICES": indices.tobytes(),
                }[name]
            )
        elif name == "LABELS":
            tensor.contents.bytes_contents.extend(labels)
        elif name == "SCORES":
            tensor.contents.fp32_contents.extend(scores.ravel().tolist())
        else:
            tensor.contents.int64_contents.extend(indices.ravel().tolist())
        tensors.append(tensor)
    return tensors, raw_contents


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
        """Whether ``name`` (version 1) is served and ready.

        Raises:
            FerryError: NOT_FOUND for an unknown model or version.
        """
        self._check_version(name, version)
        return bool((await self._catalog.get(validation.model_id(name, field="name"))).ready)

    async def model_metadata(self, name: str, version: str) -> oip.ModelMetadataResponse:
        """The model's inputs and outputs as the protocol describes tensors."""
        self._check_version(name, version)
        model = await self._catalog.get(validation.model_id(name, field="name"))
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=model.name.removeprefix(validation.MODEL_PREFIX),
            versions=[MODEL_VERSION],
            platform="pytorch",
            inputs=[tensor(name=IMAGE_INPUT, datatype="BYTES", shape=[-1])],
            outputs=[tensor(name=n, datatype=d, shape=[-1, -1]) for n, d in OUTPUTS.items()],
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
        self._check_version(request.model_name, request.model_version)
        model = validation.model_id(request.model_name, field="model_name")
        parameters = dict(request.parameters)
        top_k = validation.top_k(_parameter_int(parameters, "top_k") or 0, s.default_top_k, s.max_top_k)
        timeout_us = _parameter_int(parameters, "timeout")
        images = images_of(request, s.max_image_bytes)
        call = self._predictor.run_many(model, images.contents, top_k, priority_of(parameters))
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
                error.message = f"{IMAGE_INPUT}[{i}]: {error.message}"
                raise error
        tensors, raw = output_tensors(results, [o.name for o in request.outputs], images.raw)
        for i, result in enumerate(results):
            record_id = self._record_id(tenant, request.id, edge, i)
            await self._predictor.record(tenant, self._prediction(record_id, model, result, started))
        return oip.ModelInferResponse(
            model_name=model,
            model_version=MODEL_VERSION,
            id=request.id,
            outputs=tensors,
            raw_output_contents=raw,
        )

    @staticmethod
    def _record_id(tenant: str, request_id: str, edge: Edge | None, index: int) -> uuid.UUID:
        # A repeated ModelInfer (same id, or the edge's resend) lands on the same records.
        if request_id:
            return prediction_id_for_request(tenant, f"oip:{request_id}:{index}")
        return new_id("oip", tenant, edge, str(index))

    @staticmethod
    def _prediction(
        record_id: uuid.UUID, model: str, result: inference_service_pb2.PredictResult, started: float
    ) -> prediction_pb2.Prediction:
        prediction = prediction_pb2.Prediction(
            name=f"predictions/{record_id}",
            model=validation.model_name(model),
            state=prediction_pb2.PREDICTION_STATE_SUCCEEDED,
            classes=result.classes,
            timing=result.timing,
            trace_id=current_trace_id(),
            source=prediction_pb2.PREDICTION_SOURCE_OIP,
        )
        prediction.timing.total_ms = (time.perf_counter() - started) * 1000.0
        prediction.create_time.GetCurrentTime()
        return prediction

    @staticmethod
    def _check_version(name: str, version: str) -> None:
        if version not in ("", MODEL_VERSION):
            raise NotFound(
                f"model {name!r} has no version {version!r}; Ferry serves version {MODEL_VERSION!r}",
                reason="MODEL_VERSION_NOT_FOUND",
                metadata={"model": name, "version": version},
            )
