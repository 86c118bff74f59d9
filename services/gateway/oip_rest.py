"""The Open Inference Protocol's HTTP/REST body <-> its gRPC messages.

Envoy hands the gateway a /v2 request's body raw (``OpenInferenceRestService``, an HttpBody); this
module reads it into the ``ModelInferRequest`` the gRPC binding takes, so both bindings share one
path (``OpenInference``: validation, inference, records), and writes the answer back as the
protocol's JSON. It speaks the binary data extension that tritonclient.http uses by default:

* request: the ``Inference-Header-Content-Length`` header gives the JSON's length; an input whose
  ``parameters.binary_data_size`` is set takes that many bytes of what follows the JSON, in input
  order (BYTES elements each after a 4-byte little-endian length, numbers little-endian);
* response: an output asked for with ``parameters.binary_data`` (or every output, when the
  request's ``parameters.binary_data_output`` is true) comes after the JSON the same way, with
  ``parameters.binary_data_size`` in its JSON entry and the JSON's length in the response's
  ``Inference-Header-Content-Length`` header.

JSON ``data`` is flat or nested row-major; BYTES elements in JSON are UTF-8 strings, or base64
with the input parameter ``"content_type": "base64"`` (MLServer's name), so an image can travel in
plain JSON.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from services.common import limits, nesting
from services.common.errors import InvalidArgument
from services.gateway.oip_tensors import IMAGE_INPUT, decode_bytes_tensor, encode_bytes_tensor

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
BASE64 = "base64"
#: Each datatype's little-endian element type and the typed contents field that carries it.
_NUMBERS = {
    "BOOL": ("?", "bool_contents"),
    "INT8": ("<i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "UINT8": ("<u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
}
#: Output parameters tritonclient may send that Ferry does not serve (Triton's classification
#: extension): refused rather than ignored, since the answer would not have the asked-for shape.
_UNSUPPORTED_OUTPUT_PARAMETERS = ("classification",)


def _bad_body(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_OIP_REST_BODY")


#: The protocol's fields of a request, an input and an output (KServe's v2 REST schema, which
#: tritonclient.http and KServe's clients send). A misspelt one ("paramters", "dta") used to be
#: ignored: the answer came back without what it asked for (top_k), or with a puzzling error.
_REQUEST_FIELDS = ("id", "parameters", "inputs", "outputs")
_INPUT_FIELDS = ("name", "shape", "datatype", "parameters", "data")
_OUTPUT_FIELDS = ("name", "parameters")


def _known_fields(value: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    """Refuses a field the protocol does not have, naming it and the ones there are."""
    for key in value:
        if key not in fields:
            raise InvalidArgument(
                f"unknown field {key!r} in {where}; its fields are: {', '.join(fields)}",
                reason="INVALID_OIP_REST_BODY",
                metadata={"field": key[:64]},
            )


@dataclass
class RestInfer:
    """One REST inference request: its gRPC form, and which outputs it wants in binary."""

    request: oip.ModelInferRequest
    binary_outputs: set[str] = field(default_factory=set)
    """Outputs to send after the JSON (names)."""
    all_binary: bool = False
    """Every output after the JSON (``binary_data_output``), unless it asked for JSON itself."""
    json_outputs: set[str] = field(default_factory=set)
    """Outputs asked for with ``binary_data`` false."""

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes after the JSON."""
        return name in self.binary_outputs or (self.all_binary and name not in self.json_outputs)


#: JSON longer than this is parsed so that it hands the GIL on (``nesting.loads``'s ``yielding``):
#: it is on a worker thread (``FERRY_GATEWAY_OIP_REST_OFF_LOOP_BYTES``, 256 KiB by default).
_YIELDING_BYTES = 64 * 1024


def _json_object(text: bytes, what: str) -> dict[str, Any]:
    try:
        value = nesting.loads(text, yielding=len(text) > _YIELDING_BYTES)
    except nesting.TooDeep:
        raise nesting.too_deep(what) from None
    except ValueError as err:  # not JSON, not UTF-8, or an integer too long to convert
        raise _bad_body(f"{what} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise _bad_body(f"{what} is a JSON {type(value).__name__}; send a JSON object")
    return value


def optional_object(body: bytes) -> dict[str, Any]:
    """A body that is empty or a JSON object (the repository's requests), as a dict.

    Raises:
        InvalidArgument: anything else.
    """
    return _json_object(body, "the request body") if body.strip() else {}


def _json_part(body: bytes, header_length: str | None) -> tuple[bytes, bytes, str]:
    """The JSON at the start of ``body`` (unparsed), the binary data after it, and how an error
    names the JSON.

    Raises:
        InvalidArgument: a header that is not a length within the body.
    """
    if header_length is None:
        return body, b"", "the request body"
    digits = header_length.strip()
    # ASCII digits only: str.isdigit() is true of '²', which int() refuses (a 500, with a traceback).
    if not (digits.isascii() and digits.isdigit()) or int(digits) > len(body):
        raise _bad_body(
            f"the Inference-Header-Content-Length header is {header_length!r}; it must be the length "
            f"of the JSON at the start of the body (the body has {len(body)} bytes)"
        )
    length = int(digits)
    return body[:length], body[length:], f"the body's first {length} bytes"


def _parameter(name: str, value: Any) -> oip.InferParameter:
    """A JSON parameter as the protocol's typed parameter (lists and objects as JSON strings)."""
    if isinstance(value, bool):
        return oip.InferParameter(bool_param=value)
    if isinstance(value, int):
        return oip.InferParameter(int64_param=value)
    if isinstance(value, str):
        return oip.InferParameter(string_param=value)
    if isinstance(value, float):
        return oip.InferParameter(string_param=repr(value))
    if isinstance(value, (list, dict)):
        return oip.InferParameter(string_param=json.dumps(value))
    raise InvalidArgument(
        f"parameter {name!r} is null; send a boolean, number, string or list",
        reason="INVALID_OIP_PARAMETER",
        metadata={"parameter": name},
    )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad_body(f"{where}.parameters is a JSON {type(value).__name__}; send an object")
    return value


def _flat(data: Any) -> Iterator[Any]:
    """The elements of a nested row-major JSON list, in order."""
    if isinstance(data, list):
        for item in data:
            yield from _flat(item)
    else:
        yield data


def _rows(data: Any) -> Iterator[list[Any]]:
    """The innermost lists of nested row-major JSON ``data``, in order (a scalar is a row of one)."""
    if not isinstance(data, list):
        yield [data]
    elif data and isinstance(data[0], list):
        for item in data:
            yield from _rows(item)
    else:
        yield data


#: Numbers a numeric tensor's JSON data is checked and copied in at a time (``_numbers``).
_NUMBERS_AT_ONCE = 65_536
_NUMBER_TYPES = frozenset((int, float, bool))


def _numbers(contents: Any, data: Any, what: str) -> None:
    """Appends JSON ``data``'s numbers to a typed contents field, row by row and a few thousand at
    a time: each step in C (a 15 MiB tensor has 3 million numbers), the interpreter free between
    steps to hand the GIL to the event loop (the body is read on a worker thread).

    Raises:
        InvalidArgument: an element that is not a number.
    """
    rows: list[list[Any]] = []
    count = 0
    for row in _rows(data):
        rows.append(row)
        count += len(row)
        if count >= _NUMBERS_AT_ONCE:
            _append_numbers(contents, rows, what)
            rows, count = [], 0
    _append_numbers(contents, rows, what)


def _append_numbers(contents: Any, rows: list[list[Any]], what: str) -> None:
    values = list(itertools.chain.from_iterable(rows))
    kinds = set(map(type, values))
    if list in kinds:  # a row mixing numbers and lists: irregular, flattened as the protocol reads it
        values = list(_flat(values))
        kinds = set(map(type, values))
    if not kinds <= _NUMBER_TYPES:
        raise _bad_body(f"{what}: its data must be numbers")
    contents.extend(values)


def _typed_contents(tensor: oip.ModelInferRequest.InferInputTensor, data: Any, base64_bytes: bool) -> None:
    """Fills ``tensor.contents`` from JSON ``data`` by the tensor's datatype."""
    where = f"input {tensor.name!r}"
    if tensor.datatype in _NUMBERS:
        contents = getattr(tensor.contents, _NUMBERS[tensor.datatype][1])
        _numbers(contents, data, f"{where} is {tensor.datatype}")
        return
    if tensor.datatype != "BYTES":
        raise _bad_body(f"{where} has datatype {tensor.datatype!r}; send BYTES, FP32 or another OIP datatype")
    # No more than an input may have items, before any is encoded (2.7 million short strings fit
    # in a 15 MiB body; each would be a bytes object first).
    most = limits.MAX_INPUTS_PER_REQUEST
    elements = list(itertools.islice(_flat(data), most + 1))
    if len(elements) > most:
        raise InvalidArgument(
            f"{where} has more than {most} items; send 1 to {most}",
            reason="INVALID_OIP_INPUT",
            metadata={"input": tensor.name[:64]},
        )
    if not all(isinstance(e, str) for e in elements):
        raise _bad_body(f"{where} is BYTES: its data must be strings")
    if base64_bytes:
        try:
            tensor.contents.bytes_contents.extend(base64.b64decode(e, validate=True) for e in elements)
        except binascii.Error:
            raise _bad_body(f"{where} says content_type base64 but an element is not base64") from None
        return
    if tensor.name == IMAGE_INPUT and any(_base64_image(e) for e in elements[:1]):
        raise _bad_body(
            f"{where} holds a base64-encoded image but does not say so: add "
            '"parameters": {"content_type": "base64"} to the input (without it a JSON string '
            "is taken as the bytes themselves), or send the file as binary data"
        )
    tensor.contents.bytes_contents.extend(e.encode() for e in elements)


#: How the image formats Ferry decodes begin (ISO BMFF's HEIC/AVIF: "ftyp" after the box size).
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _base64_image(text: str) -> bool:
    """Whether a JSON string is the base64 of an image file: the caller forgot content_type base64
    (an image's own bytes are never a JSON string: they are not UTF-8)."""
    try:
        head = base64.b64decode(text[:32], validate=True)
    except (binascii.Error, ValueError):
        return False
    webp = head.startswith(b"RIFF") and head[8:12] == b"WEBP"
    return head.startswith(_IMAGE_MAGIC) or webp or head[4:8] == b"ftyp"


def _input(
    value: Any, index: int, binary: memoryview, offset: int
) -> tuple[oip.ModelInferRequest.InferInputTensor, bytes | None, int]:
    """One JSON input as a gRPC input, its raw bytes (binary data) and the new binary offset."""
    if not isinstance(value, dict):
        raise _bad_body(f"inputs[{index}] is not an object with name, shape, datatype and data")
    where = f"inputs[{index}]"
    _known_fields(value, _INPUT_FIELDS, where)
    name, shape, datatype = value.get("name"), value.get("shape"), value.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise _bad_body(f"{where} needs a name and a datatype (strings)")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise _bad_body(f"{where} ({name!r}) needs a shape: a list of integers")
    parameters = _parameters(value.get("parameters"), where)
    _few(parameters, f"{where}.parameters")
    tensor = oip.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    size = parameters.get(BINARY_DATA_SIZE)
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise _bad_body(
                f"{where} ({name!r}) has binary_data_size {size!r} but only {len(binary) - offset} bytes "
                "of binary data follow"
            )
        return tensor, bytes(binary[offset : offset + size]), offset + size
    if "data" not in value:
        raise _bad_body(f"{where} ({name!r}) has neither data nor parameters.binary_data_size")
    _typed_contents(tensor, value["data"], parameters.get("content_type") == BASE64)
    return tensor, None, offset


def infer_request(body: bytes, header_length: str | None, model_name: str, model_version: str) -> RestInfer:
    """Reads a REST inference request (JSON, then binary data) into its gRPC form.

    Raises:
        InvalidArgument: a body that is not the protocol's JSON, binary data that does not match the
            sizes the inputs give, inputs mixing JSON and binary data, or values protobuf cannot
            hold (a number out of its datatype's range, a string with a lone surrogate).
    """
    text, binary, what = _json_part(body, header_length)
    _refuse_string_flood(text)  # before the parse, which a flood of strings makes costly
    document = _json_object(text, what)
    try:
        return _infer_request(document, binary, model_name, model_version)
    except (ValueError, OverflowError, TypeError) as err:  # UnicodeEncodeError is a ValueError
        raise _bad_body(f"the request holds a value its field cannot take: {err}") from None


def strings_at_least(text: bytes) -> int:
    """How many strings JSON ``text`` holds at least, from its quotes alone (a C loop, no parse).

    Quotes less escaped quotes (``\\"``) never count more than the JSON's real quotes, two per
    string: a real quote after an escaped backslash (``\\\\"``) is left out too, so the count can
    only fall short.
    """
    return (text.count(b'"') - text.count(b'\\"')) // 2


def _refuse_string_flood(text: bytes) -> None:
    """Refuses JSON holding more strings than ``limits.MAX_OIP_BODY_STRINGS``, before it is parsed.

    Raises:
        InvalidArgument: INVALID_OIP_REST_BODY, naming the limit.
    """
    strings = strings_at_least(text)
    if strings > limits.MAX_OIP_BODY_STRINGS:
        raise _bad_body(
            f"the request holds at least {strings} JSON strings; a request may hold at most "
            f"{limits.MAX_OIP_BODY_STRINGS} ({limits.MAX_OIP_TENSORS} inputs of at most "
            f"{limits.MAX_INPUTS_PER_REQUEST} items each, and their names): send 1 to "
            f"{limits.MAX_INPUTS_PER_REQUEST} items per input"
        )


def _few(value: Any, field: str) -> None:
    """Refuses more than limits.MAX_OIP_TENSORS entries in ``field`` before any is converted."""
    if isinstance(value, (list, dict)) and len(value) > limits.MAX_OIP_TENSORS:
        raise _bad_body(
            f'"{field}" has {len(value)} entries; a request may have at most {limits.MAX_OIP_TENSORS}'
        )


def _infer_request(document: dict[str, Any], binary: bytes, model_name: str, model_version: str) -> RestInfer:
    request = oip.ModelInferRequest(model_name=model_name, model_version=model_version)
    _known_fields(document, _REQUEST_FIELDS, "the request")
    for field_name in ("inputs", "outputs", "parameters"):
        _few(document.get(field_name), field_name)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise _bad_body("id must be a string")
    request.id = request_id
    parameters = _parameters(document.get("parameters"), "the request")
    all_binary = parameters.pop(BINARY_DATA_OUTPUT, False) is True
    for name, value in parameters.items():
        request.parameters[name].CopyFrom(_parameter(name, value))
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad_body('the request needs "inputs": a list of {name, shape, datatype, data} objects')
    view, offset, raws = memoryview(binary), 0, []
    for index, value in enumerate(inputs):
        tensor, raw, offset = _input(value, index, view, offset)
        request.inputs.append(tensor)
        raws.append(raw)
    if offset != len(binary):
        raise _bad_body(f"{len(binary) - offset} bytes of binary data follow the JSON that no input claims")
    if any(raw is not None for raw in raws):
        if any(raw is None for raw in raws):
            raise _bad_body("send every input as binary data or every input as JSON data, not a mix")
        request.raw_input_contents.extend(raw for raw in raws if raw is not None)
    rest = RestInfer(request, all_binary=all_binary)
    _read_outputs(document.get("outputs"), rest)
    return rest


def _read_outputs(outputs: Any, rest: RestInfer) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise _bad_body('"outputs" must be a list of {name, parameters} objects')
    for index, value in enumerate(outputs):
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise _bad_body(f"outputs[{index}] needs a name (a string)")
        _known_fields(value, _OUTPUT_FIELDS, f"outputs[{index}]")
        name = value["name"]
        parameters = _parameters(value.get("parameters"), f"outputs[{index}]")
        unsupported = [p for p in _UNSUPPORTED_OUTPUT_PARAMETERS if p in parameters]
        if unsupported:
            raise InvalidArgument(
                f"output parameter {unsupported[0]!r} is not supported; ask for LABELS and SCORES "
                "with the top_k request parameter instead",
                reason="INVALID_OIP_PARAMETER",
                metadata={"parameter": unsupported[0]},
            )
        rest.request.outputs.add(name=name)
        wanted = parameters.get(BINARY_DATA)
        if wanted is True:
            rest.binary_outputs.add(name)
        elif wanted is False:
            rest.json_outputs.add(name)


def _output_values(
    tensor: oip.ModelInferResponse.InferOutputTensor, raw: bytes | None
) -> tuple[list[Any], bytes]:
    """An output's elements for JSON and its binary form, from typed or raw contents."""
    if tensor.datatype == "BYTES":
        elements = (
            decode_bytes_tensor(raw, tensor.name) if raw is not None else list(tensor.contents.bytes_contents)
        )
        return [
            e.decode("utf-8", "replace") for e in elements
        ], raw if raw is not None else encode_bytes_tensor(elements)
    dtype, contents = _NUMBERS[tensor.datatype]
    array = (
        np.frombuffer(raw, dtype=dtype)
        if raw is not None
        else np.asarray(getattr(tensor.contents, contents), dtype=dtype)
    )
    return array.tolist(), raw if raw is not None else array.tobytes()


@dataclass(frozen=True)
class RestAnswer:
    """A REST answer: its body, content type and the JSON's length when binary data follows."""

    body: bytes
    content_type: str
    header_length: int | None


def infer_answer(response: oip.ModelInferResponse, rest: RestInfer) -> RestAnswer:
    """The protocol's JSON answer (and binary outputs after it, where asked) for ``response``."""
    raws = list(response.raw_output_contents)
    outputs, binary = [], []
    for i, tensor in enumerate(response.outputs):
        values, packed = _output_values(tensor, raws[i] if raws else None)
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if rest.wants_binary(tensor.name):
            entry["parameters"] = {BINARY_DATA_SIZE: len(packed)}
            binary.append(packed)
        else:
            entry["data"] = values
        outputs.append(entry)
    document = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": outputs,
    }
    text = json_bytes(document)
    if not binary:
        return RestAnswer(text, JSON_TYPE, None)
    return RestAnswer(text + b"".join(binary), BINARY_TYPE, len(text))


def json_bytes(document: Any) -> bytes:
    """``document`` as compact UTF-8 JSON."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def metadata_document(metadata: oip.ModelMetadataResponse) -> dict[str, Any]:
    """The protocol's model metadata JSON (shapes as numbers, unlike protobuf's JSON of int64)."""

    def tensors(found: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in found]

    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }
