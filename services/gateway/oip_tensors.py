"""Open Inference Protocol tensors <-> Ferry's inputs and answers.

One ModelInfer carries one input tensor whose first dimension counts the items; its name says
what the items are:

* ``IMAGE``: BYTES ``[n]``, each element an encoded image file (JPEG, PNG, ...);
* ``TEXT``: BYTES ``[n]``, each element a UTF-8 text (for a text model; the ``candidate_labels``
  request parameter asks for zero-shot classification);
* ``JSON``: BYTES ``[n]``, each element a JSON object (for a JSON model such as a notebook);
* ``TENSOR``: FP32 ``[n, ...]``, each item an array of the model's input shape (for an image
  classifier: ``[n, 3, 224, 224]``, already resized and normalised).

Elements come in the typed ``contents`` or in ``raw_input_contents`` (little-endian; BYTES
elements each after a 4-byte length). Answers become output tensors with the batch dimension
first: ``LABELS`` (BYTES), ``SCORES`` (FP32), ``CLASS_INDICES`` (INT64) for classes, ``EMBEDDING``
(FP32), ``OUTPUT`` (BYTES, JSON objects) and each tensor a model answers under its own name, raw
when the request was raw.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format, struct_pb2

from ferry.inference.v1 import inference_service_pb2
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.types.v1 import types_pb2
from services.common import limits, nesting, validation
from services.common.errors import InvalidArgument

IMAGE_INPUT = "IMAGE"
TEXT_INPUT = "TEXT"
JSON_INPUT = "JSON"
TENSOR_INPUT = "TENSOR"
#: Each input's datatype and what one of its elements is, for messages.
INPUTS = {
    IMAGE_INPUT: ("BYTES", "encoded image files"),
    TEXT_INPUT: ("BYTES", "UTF-8 texts"),
    JSON_INPUT: ("BYTES", "JSON objects"),
    TENSOR_INPUT: ("FP32", "arrays of the model's input shape, after the batch dimension"),
}
CLASS_OUTPUTS = {"LABELS": "BYTES", "SCORES": "FP32", "CLASS_INDICES": "INT64"}
EMBEDDING_OUTPUT = "EMBEDDING"
JSON_OUTPUT = "OUTPUT"
_FP32 = np.dtype("<f4")
_ACCEPTED = ", ".join(f"{name} ({datatype}: {what})" for name, (datatype, what) in INPUTS.items())


def decode_bytes_tensor(raw: bytes, name: str = IMAGE_INPUT, most: int | None = None) -> list[bytes]:
    """Splits a raw BYTES tensor: each element a 4-byte little-endian length, then its bytes.

    Args:
        raw: the tensor's raw contents.
        name: the input's name, for messages.
        most: the most elements it may hold (none: no bound), refused as soon as one more is seen:
            16 MiB of one-byte elements is 3.3 million, each a step of this loop.

    Raises:
        InvalidArgument: the buffer does not split into whole elements, or holds more than ``most``.
    """
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if most is not None and len(elements) == most:
            raise _bad_input(name, f"input {name!r} has more than {most} items; send 1 to {most}")
        if offset + 4 > len(raw):
            raise _bad_input(name, f"raw contents of {name!r} end inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise _bad_input(
                name, f"raw contents of {name!r} end inside an element; each is a 4-byte length, then bytes"
            )
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def encode_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """The raw form of a BYTES tensor (see ``decode_bytes_tensor``)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _bad_input(name: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_OIP_INPUT", metadata={"input": name})


@dataclass(frozen=True)
class Inputs:
    """The items of one ModelInfer as Ferry inputs, and whether the client spoke raw tensors."""

    items: list[types_pb2.Input]
    raw: bool


def inputs_of(request: oip.ModelInferRequest, max_bytes: int, candidate_labels: Sequence[str] = ()) -> Inputs:
    """Reads the request's one input tensor into one Ferry input per item.

    Args:
        request: the ModelInfer request.
        max_bytes: the largest image, and the largest item of any other kind.
        candidate_labels: labels a text is classified against (the ``candidate_labels`` parameter).

    Raises:
        InvalidArgument: not exactly one known input, a datatype or shape that does not fit its
            contents, no items or too many, or an item that is empty, too large or malformed.
    """
    names = [tensor.name for tensor in request.inputs]
    known = [name for name in names if name in INPUTS]
    if len(known) != 1 or len(names) != 1:
        raise _bad_input(",".join(names), f"the request has inputs {names}; send exactly one of {_ACCEPTED}")
    tensor, name = request.inputs[0], known[0]
    if len(tensor.shape) > limits.MAX_TENSOR_DIMS:  # before anything multiplies them out
        raise _bad_input(
            name,
            f"input {name!r} has a shape of {len(tensor.shape)} dimensions; the limit is "
            f"{limits.MAX_TENSOR_DIMS} (an image batch has 4: [n, 3, height, width])",
        )
    datatype = INPUTS[name][0]
    if tensor.datatype != datatype:
        other = next((n for n, (d, _) in INPUTS.items() if d == tensor.datatype), None)
        hint = f"; send {tensor.datatype} items as input {other!r}" if other else ""
        raise _bad_input(
            name, f"input {name!r} is {tensor.datatype}; it must be {datatype}: {INPUTS[name][1]}{hint}"
        )
    raw = bool(request.raw_input_contents)
    if raw and len(request.raw_input_contents) != 1:
        raise _bad_input(name, "raw_input_contents must hold one entry per input")
    if raw and tensor.contents.ListFields():  # which one is meant? Triton refuses it too
        raise _bad_input(name, f"input {name!r} has both contents and raw_input_contents; send one of them")
    if name == TENSOR_INPUT:
        items = _tensor_items(tensor, request.raw_input_contents[0] if raw else None, max_bytes)
        return Inputs(items, raw)
    if any(d < 0 for d in tensor.shape):  # [-1, -1] multiplies to 1 and passed for one element
        raise _bad_input(
            name,
            f"input {name!r} has shape {list(tensor.shape)}; its dimensions are counts: none is negative",
        )
    elements = _bytes_elements(request, tensor, name)
    expected = math.prod(tensor.shape) if tensor.shape else len(elements)
    if expected != len(elements):
        raise _bad_input(name, f"input {name!r} has shape {list(tensor.shape)} but {len(elements)} elements")
    _check_count(name, len(elements))
    where = [f"{name}[{i}]" for i in range(len(elements))]
    if name == IMAGE_INPUT:
        return Inputs([_image(e, max_bytes, w) for e, w in zip(elements, where, strict=True)], raw)
    if name == TEXT_INPUT:
        return Inputs([_text(e, candidate_labels, w) for e, w in zip(elements, where, strict=True)], raw)
    return Inputs([_payload(e, max_bytes, w) for e, w in zip(elements, where, strict=True)], raw)


def _bytes_elements(
    request: oip.ModelInferRequest, tensor: oip.ModelInferRequest.InferInputTensor, name: str
) -> list[bytes]:
    """A BYTES input's elements, their count bounded before any is copied out: a 15 MiB message of
    millions of tiny elements was split and listed one by one on the gateway's event loop before
    its count was checked (the typed contents' length is known without reading them)."""
    if request.raw_input_contents:
        return decode_bytes_tensor(request.raw_input_contents[0], name, limits.MAX_INPUTS_PER_REQUEST)
    _check_count(name, len(tensor.contents.bytes_contents))
    return list(tensor.contents.bytes_contents)


def _check_count(name: str, count: int) -> None:
    if not 1 <= count <= limits.MAX_INPUTS_PER_REQUEST:
        raise _bad_input(name, f"input {name!r} has {count} items; send 1 to {limits.MAX_INPUTS_PER_REQUEST}")


#: Where an OIP caller puts an image file, for MISSING_IMAGE's message.
_SEND_IMAGE = (
    "as each element of the BYTES input 'IMAGE' (over REST JSON, base64 with "
    '"parameters": {"content_type": "base64"})'
)


def _image(content: bytes, max_bytes: int, where: str) -> types_pb2.Input:
    image = types_pb2.Image(content=content)
    # Not "in IMAGE[0].content (base64 in JSON)": an OIP input has no content field.
    validation.image_content(image, max_bytes, where=where, send_as=_SEND_IMAGE)
    return types_pb2.Input(image=image)


def _text(content: bytes, candidate_labels: Sequence[str], where: str) -> types_pb2.Input:
    try:
        decoded = content.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_input(TEXT_INPUT, f"{where} is not UTF-8 text") from None
    text = types_pb2.Text(content=decoded, candidate_labels=candidate_labels)
    return types_pb2.Input(text=validation.text(text, where=where))


def _payload(content: bytes, max_bytes: int, where: str) -> types_pb2.Input:
    if len(content) > max_bytes:
        raise _bad_input(JSON_INPUT, f"{where} is {len(content)} bytes; the limit is {max_bytes}")
    try:
        value = nesting.loads(content)
    except nesting.TooDeep:
        raise nesting.too_deep(where) from None
    except ValueError as err:  # not UTF-8, not JSON, an integer of thousands of digits
        raise _bad_input(JSON_INPUT, f"{where} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise _bad_input(JSON_INPUT, f"{where} is a JSON {type(value).__name__}; send a JSON object")
    payload = struct_pb2.Struct()
    try:
        payload.update(value)
    except (ValueError, OverflowError) as err:  # a lone surrogate (\ud800), a number past a double
        raise _bad_input(JSON_INPUT, f"{where} holds a value a JSON object cannot carry: {err}") from None
    return types_pb2.Input(payload=payload)


def _tensor_items(
    tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None, max_bytes: int
) -> list[types_pb2.Input]:
    """Splits an FP32 ``[n, ...]`` tensor into n items of shape ``[...]``."""
    shape = [int(d) for d in tensor.shape]
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise _bad_input(
            TENSOR_INPUT,
            f"input {TENSOR_INPUT!r} has shape {shape}; send [n, ...]: n items of the model's input "
            "shape, for example [1, 3, 224, 224] for an image classifier",
        )
    count = math.prod(shape)  # Python's integers: numpy's int64 product wraps around
    if count > limits.MAX_TENSOR_ELEMENTS:
        raise _bad_input(
            TENSOR_INPUT,
            f"input {TENSOR_INPUT!r} has shape {shape}: {count} elements; the limit is "
            f"{limits.MAX_TENSOR_ELEMENTS}",
        )
    if raw is not None:
        if len(raw) != 4 * count:
            raise _bad_input(
                TENSOR_INPUT,
                f"raw contents of {TENSOR_INPUT!r} are {len(raw)} bytes; shape {shape} needs {4 * count}",
            )
        values = np.frombuffer(raw, dtype=_FP32)
    else:
        if len(tensor.contents.fp32_contents) != count:
            raise _bad_input(
                TENSOR_INPUT,
                f"input {TENSOR_INPUT!r} has {len(tensor.contents.fp32_contents)} fp32_contents; "
                f"shape {shape} needs {count}",
            )
        values = np.asarray(tensor.contents.fp32_contents, dtype=_FP32)
    _check_count(TENSOR_INPUT, shape[0])
    item_shape, size = shape[1:], count // shape[0]
    if 4 * size > max_bytes:
        raise _bad_input(
            TENSOR_INPUT, f"each item of {TENSOR_INPUT!r} is {4 * size} bytes; the limit is {max_bytes}"
        )
    return [
        types_pb2.Input(
            tensor=types_pb2.Tensor(
                datatype="FP32", shape=item_shape, raw_contents=values[i * size : (i + 1) * size].tobytes()
            )
        )
        for i in range(shape[0])
    ]


def tensor_array(tensor: types_pb2.Tensor) -> npt.NDArray[np.float32]:
    """A Ferry tensor (fp32_contents or raw little-endian contents) as an array of its shape."""
    if tensor.raw_contents:
        values = np.frombuffer(tensor.raw_contents, dtype=_FP32)
    else:
        values = np.asarray(tensor.fp32_contents, dtype=_FP32)
    return values.reshape([int(d) for d in tensor.shape])


@dataclass(frozen=True)
class _Output:
    datatype: str
    shape: list[int]
    values: npt.NDArray[np.generic] | list[bytes]


def _outputs(results: Sequence[inference_service_pb2.PredictResult]) -> dict[str, _Output]:
    """Every output all ``results`` have, batched, by output name."""
    n = len(results)
    found: dict[str, _Output] = {}
    if all(r.classes for r in results):
        k = min(len(r.classes) for r in results)
        found["LABELS"] = _Output("BYTES", [n, k], [c.label.encode() for r in results for c in r.classes[:k]])
        scores = np.array([[c.score for c in r.classes[:k]] for r in results], dtype=_FP32)
        found["SCORES"] = _Output("FP32", [n, k], scores)
        indices = np.array([[c.index for c in r.classes[:k]] for r in results], dtype="<i8")
        found["CLASS_INDICES"] = _Output("INT64", [n, k], indices)
    if all(r.embedding for r in results) and len({len(r.embedding) for r in results}) == 1:
        embedding = np.array([list(r.embedding) for r in results], dtype=_FP32)
        found[EMBEDDING_OUTPUT] = _Output("FP32", list(embedding.shape), embedding)
    if all(r.HasField("output") for r in results):
        objects = [json.dumps(json_format.MessageToDict(r.output)).encode() for r in results]
        found[JSON_OUTPUT] = _Output("BYTES", [n], objects)
    for name in [t.name for t in results[0].tensors] if results else []:
        arrays = [tensor_array(t) for r in results for t in r.tensors if t.name == name]
        if len(arrays) == n and len({a.shape for a in arrays}) == 1:
            stacked = np.stack(arrays).astype(_FP32)
            found[name] = _Output("FP32", list(stacked.shape), stacked)
    return found


def check_request_size(request: oip.ModelInferRequest) -> None:
    """Refuses a request asking for an output twice, or naming more than limits.MAX_OIP_TENSORS
    outputs or parameters, before any work: each output asked for is built and sent (200,000
    asks for LABELS made an answer of 200,000 copies).

    Raises:
        InvalidArgument: INVALID_OIP_OUTPUT or INVALID_OIP_PARAMETER.
    """
    wanted = [o.name for o in request.outputs]
    if len(wanted) > limits.MAX_OIP_TENSORS or len(set(wanted)) != len(wanted):
        raise InvalidArgument(
            f"the request asks for {len(wanted)} outputs ({len(set(wanted))} different); ask for each "
            f"output once, at most {limits.MAX_OIP_TENSORS}",
            reason="INVALID_OIP_OUTPUT",
        )
    if len(request.parameters) > limits.MAX_OIP_TENSORS:
        raise InvalidArgument(
            f"the request has {len(request.parameters)} parameters; at most {limits.MAX_OIP_TENSORS}",
            reason="INVALID_OIP_PARAMETER",
        )


def output_tensors(
    results: Sequence[inference_service_pb2.PredictResult], wanted: Sequence[str], raw: bool
) -> tuple[list[oip.ModelInferResponse.InferOutputTensor], list[bytes]]:
    """Builds the requested outputs (all the model answered when ``wanted`` is empty).

    Raises:
        InvalidArgument: an output this model does not answer (the message lists those it does).
    """
    available = _outputs(results)
    names = list(wanted) or list(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise InvalidArgument(
            f"unknown outputs {unknown}; this model answers {list(available)}", reason="INVALID_OIP_OUTPUT"
        )
    tensors, raw_contents = [], []
    for name in names:
        out = available[name]
        tensor = oip.ModelInferResponse.InferOutputTensor(name=name, datatype=out.datatype, shape=out.shape)
        if isinstance(out.values, list):
            if raw:
                raw_contents.append(encode_bytes_tensor(out.values))
            else:
                tensor.contents.bytes_contents.extend(out.values)
        elif raw:
            raw_contents.append(out.values.tobytes())
        elif out.datatype == "INT64":
            tensor.contents.int64_contents.extend(out.values.ravel().tolist())
        else:
            tensor.contents.fp32_contents.extend(out.values.ravel().tolist())
        tensors.append(tensor)
    return tensors, raw_contents
