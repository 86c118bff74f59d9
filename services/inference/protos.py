"""Conversions between the wire (``ferry.types.v1`` protos) and the inference core's plain values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format, struct_pb2

from ferry.inference.v1 import inference_service_pb2
from ferry.types.v1 import types_pb2
from services.common import limits
from services.common.errors import status_to_proto
from services.inference.calls import Answered, Outcome, Timing
from services.inference.models.contract import IMAGE, PAYLOAD, TENSOR, TEXT, Answer, InvalidInput, ModelInput

FP32 = "FP32"


def model_input(item: types_pb2.Input) -> ModelInput:
    """The contract's view of one request input.

    Raises:
        InvalidInput: No input kind set, a tensor whose datatype, shape and contents disagree,
            or a tensor or payload holding NaN or infinity.
    """
    kind = item.WhichOneof("kind")
    if kind == IMAGE:
        return ModelInput(IMAGE, image=item.image.content)
    if kind == TEXT:
        return ModelInput(TEXT, text=item.text.content, candidate_labels=tuple(item.text.candidate_labels))
    if kind == PAYLOAD:
        try:
            return ModelInput(PAYLOAD, payload=struct_to_dict(item.payload))
        except ValueError:  # NaN or infinity, which JSON cannot spell: it was a 500
            raise InvalidInput("its payload holds NaN or infinity; send finite numbers") from None
    if kind == TENSOR:
        array = tensor_array(item.tensor)
        if not np.isfinite(array).all():  # a model only spreads them: NaN scores, invalid JSON
            raise InvalidInput("its tensor holds NaN or infinity; send finite FP32 values")
        return ModelInput(TENSOR, tensor=array)
    raise InvalidInput("it is empty; set one of image, text, payload or tensor")


def call_inputs(inputs: Sequence[types_pb2.Input]) -> list[ModelInput | InvalidInput]:
    """Each request input in the contract's terms, or why it cannot be (answered in its place)."""
    converted: list[ModelInput | InvalidInput] = []
    for proto in inputs:
        try:
            converted.append(model_input(proto))
        except InvalidInput as err:
            converted.append(err)
    return converted


def predict_result(outcome: Outcome) -> inference_service_pb2.PredictResult:
    """One input's outcome as a PredictResult: its answer and timing, or its own error."""
    if not isinstance(outcome, Answered):
        return inference_service_pb2.PredictResult(
            error=status_to_proto(grpc.StatusCode.INVALID_ARGUMENT, outcome.message, outcome.reason)
        )
    return inference_service_pb2.PredictResult(
        timing=timing_proto(outcome.timing),
        members=[types_pb2.MemberTiming(model=name, timing=timing_proto(t)) for name, t in outcome.members],
        **answer_fields(outcome.answer),
    )


def timing_proto(timing: Timing) -> types_pb2.Timing:
    """Timing as its ``ferry.types.v1`` message."""
    return types_pb2.Timing(
        decode_ms=timing.decode_ms,
        queue_ms=timing.queue_ms,
        inference_ms=timing.inference_ms,
        batch_size=timing.batch_size,
        total_ms=timing.total_ms,
    )


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain JSON object (whole numbers stay floats, as JSON has one number type)."""
    return json_format.MessageToDict(value)


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A JSON-serializable object as a Struct.

    Raises:
        ValueError: The object holds a value JSON cannot carry.
    """
    struct = struct_pb2.Struct()
    json_format.ParseDict(value, struct)
    return struct


def tensor_array(tensor: types_pb2.Tensor) -> npt.NDArray[np.float32]:
    """The tensor's elements as an array of its shape.

    Raises:
        InvalidInput: Not FP32, a negative dimension, or contents that do not fill the shape.
    """
    if tensor.datatype.upper() != FP32:
        raise InvalidInput(f"its tensor has datatype {tensor.datatype or 'unset'!r}; FP32 is supported")
    if len(tensor.shape) > limits.MAX_TENSOR_DIMS:
        raise InvalidInput(
            f"its tensor shape has {len(tensor.shape)} dimensions; the limit is {limits.MAX_TENSOR_DIMS}"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if not shape or any(d < 1 for d in shape):  # a 0 made an empty array of any shape: a 500
        raise InvalidInput(f"its tensor shape {list(shape)} must list one or more positive sizes")
    count = math.prod(shape)  # Python's integers: numpy's int64 product wraps ([2**32, 2**32] is 0)
    if count > limits.MAX_TENSOR_ELEMENTS:
        raise InvalidInput(f"its tensor has {count} elements; the limit is {limits.MAX_TENSOR_ELEMENTS}")
    if tensor.raw_contents:
        if len(tensor.raw_contents) != 4 * count:
            raise InvalidInput(
                f"its tensor's raw_contents has {len(tensor.raw_contents)} bytes; shape {list(shape)} "
                f"needs {4 * count} (little-endian FP32)"
            )
        values = np.frombuffer(tensor.raw_contents, dtype="<f4")
    else:
        if len(tensor.fp32_contents) != count:
            raise InvalidInput(
                f"its tensor has {len(tensor.fp32_contents)} fp32_contents; shape {list(shape)} needs {count}"
            )
        values = np.asarray(tensor.fp32_contents, dtype=np.float32)
    return np.ascontiguousarray(values.astype(np.float32).reshape(shape))


def tensor_proto(name: str, array: npt.NDArray[np.float32]) -> types_pb2.Tensor:
    """An array as an FP32 tensor (elements in fp32_contents, row-major)."""
    flat = np.asarray(array, dtype=np.float32).ravel()
    return types_pb2.Tensor(name=name, datatype=FP32, shape=list(array.shape), fp32_contents=flat.tolist())


def answer_fields(answer: Answer) -> dict[str, Any]:
    """The PredictResult (and Prediction) fields of an answer, as keyword arguments."""
    fields: dict[str, Any] = {
        "classes": [types_pb2.ClassScore(label=c.label, score=c.score, index=c.index) for c in answer.classes]
    }
    if answer.embedding is not None:
        fields["embedding"] = answer.embedding.astype(np.float32).ravel().tolist()
    if answer.output is not None:
        fields["output"] = dict_to_struct(answer.output)
    if answer.tensors:
        fields["tensors"] = [tensor_proto(name, array) for name, array in answer.tensors.items()]
    return fields
