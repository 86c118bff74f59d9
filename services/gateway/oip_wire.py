"""A native gRPC ``ModelInfer``'s BYTES element count, read from its wire bytes before it is parsed.

gRPC parses a request whole before any handler runs. A 14 MiB ``ModelInferRequest`` of 5 million
one-byte ``bytes_contents`` elements took upb 0.3-2.7 s and about 450 MB to parse, only for the
handler to refuse it (an input has at most ``limits.MAX_INPUTS_PER_REQUEST`` items), and the
gateway that parsed it grew by that much per call, up to 1.3 GB over six (docs/benchmarks.md,
session 12). The protobuf wire format can be walked without parsing: each field is a tag and, for
the nested messages and ``bytes`` here, a length to skip. So the gateway's deserializer first
counts each input's ``bytes_contents`` here, stopping one past the limit, and refuses such a call
with an error of the handler's kind (INVALID_OIP_INPUT) without parsing it. Everything else,
well-formed or not, is left to the parse and the handler, which say what they always did.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.common import limits
from services.common.errors import InvalidArgument

# Field numbers of grpc_predict_v2.proto (protos/ferry/oip/v2).
_INPUTS = 5  # ModelInferRequest.inputs
_NAME = 1  # InferInputTensor.name
_CONTENTS = 5  # InferInputTensor.contents
_BYTES_CONTENTS = 8  # InferTensorContents.bytes_contents
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
#: Fields walked at most before the walk leaves a message to the parse: a few milliseconds of
#: Python, whatever the message holds (millions of unpacked scalars cost upb little).
_FIELD_BUDGET = 64 * limits.MAX_INPUTS_PER_REQUEST


class _Malformed(Exception):
    """The bytes are not a protobuf message: the parse will say so."""


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _Malformed
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """Each field's number and, for a length-delimited one, its bytes (no copy)."""
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        number, kind = tag >> 3, tag & 7
        if kind == _VARINT:
            _, at = _varint(data, at)
            yield number, None
        elif kind in (_FIXED64, _FIXED32):
            at += 8 if kind == _FIXED64 else 4
            yield number, None
        elif kind == _LENGTH:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise _Malformed
            yield number, data[at : at + size]
            at += size
        else:  # groups: not in this message
            raise _Malformed
    if at != len(data):
        raise _Malformed


def too_many_bytes_elements(data: bytes) -> InvalidArgument | None:
    """The refusal of a ``ModelInferRequest`` (wire bytes) with an input of more BYTES elements
    than an input may have, or None: within the limits, not a message the parse would take, or
    more fields than the walk looks at (``_FIELD_BUDGET``: unpacked scalars are the parse's)."""
    most = limits.MAX_INPUTS_PER_REQUEST
    walked = 0
    try:
        for number, tensor in _fields(memoryview(data)):
            walked += 1
            if number != _INPUTS or tensor is None:
                continue
            name, count = "", 0
            for field, value in _fields(tensor):
                walked += 1
                if field == _NAME and value is not None:
                    name = bytes(value).decode("utf-8", errors="replace")
                elif field == _CONTENTS and value is not None:
                    for element, _ in _fields(value):
                        walked += 1
                        count += element == _BYTES_CONTENTS
                        if count > most:
                            return InvalidArgument(
                                f"input {name or '?'!r} has more than {most} items; send 1 to {most}",
                                reason="INVALID_OIP_INPUT",
                                metadata={"input": name},
                            )
                        if walked > _FIELD_BUDGET:
                            return None
                if walked > _FIELD_BUDGET:
                    return None
    except _Malformed:
        return None
    return None
