"""A native gRPC ModelInfer's BYTES elements are counted from its wire bytes before it is parsed
(services/gateway/oip_wire.py): too many, and the call is refused unparsed; anything else goes to
the parse and the handler as before."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from services.common import limits
from services.common.errors import InvalidArgument
from services.common.interceptors import Undecodable, guarded
from services.gateway import oip_wire

MOST = limits.MAX_INPUTS_PER_REQUEST

_inputs = st.lists(
    st.tuples(
        st.text(max_size=8),
        st.sampled_from(["BYTES", "FP32", "INT64"]),
        st.integers(0, MOST + 20),  # bytes_contents elements
        st.integers(0, 50),  # fp32_contents elements
    ),
    max_size=3,
)


def _request(inputs: list[tuple[str, str, int, int]], raw: bool = False) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="minilm", id="x")
    for name, datatype, elements, numbers in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[elements, 1])
        tensor.contents.bytes_contents.extend([b"ab"] * elements)
        tensor.contents.fp32_contents.extend([0.5] * numbers)
        tensor.parameters["content_type"].string_param = "str"
    if raw:
        request.raw_input_contents.append(b"\x00" * 1000)
    request.outputs.add(name="out")
    return request


@settings(max_examples=150, deadline=None)
@given(_inputs, st.booleans())
def test_refused_exactly_when_an_input_has_more_bytes_elements_than_an_input_may(
    inputs: list[tuple[str, str, int, int]], raw: bool
) -> None:
    refusal = oip_wire.too_many_bytes_elements(_request(inputs, raw).SerializeToString())
    over = [name for name, _, elements, _ in inputs if elements > MOST]
    if not over:
        assert refusal is None
        return
    assert isinstance(refusal, InvalidArgument)
    assert refusal.reason == "INVALID_OIP_INPUT"
    assert refusal.message == f"input {over[0] or '?'!r} has more than {MOST} items; send 1 to {MOST}"


def test_millions_of_elements_are_refused_unparsed() -> None:
    request = _request([("TEXT", "BYTES", 0, 0)])
    request.inputs[0].contents.bytes_contents.extend([b"a"] * 2_000_000)
    refusal = oip_wire.too_many_bytes_elements(request.SerializeToString())
    assert refusal is not None and "'TEXT' has more than" in refusal.message


def test_millions_of_unpacked_numbers_are_left_to_the_parse() -> None:
    # fp32_contents written one field each (unpacked), as a hostile client may: the walk gives up
    # after its budget and the parse (cheap for numbers) and the handler decide.
    field = bytes([(6 << 3) | 5]) + b"\x00\x00\x80\x3f"
    contents = field * 1_000_000
    tensor = b"\x0a\x01X" + bytes([(5 << 3) | 2]) + _varint(len(contents)) + contents
    data = bytes([(5 << 3) | 2]) + _varint(len(tensor)) + tensor
    assert len(oip.ModelInferRequest.FromString(data).inputs[0].contents.fp32_contents) == 1_000_000
    assert oip_wire.too_many_bytes_elements(data) is None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_get_a_verdict_never_an_error(data: bytes) -> None:
    verdict = oip_wire.too_many_bytes_elements(data)
    assert verdict is None or verdict.reason == "INVALID_OIP_INPUT"


def test_the_guarded_deserializer_refuses_with_the_prescan_and_never_parses() -> None:
    def parse(data: bytes) -> oip.ModelInferRequest:
        raise AssertionError("parsed")

    request = _request([("TEXT", "BYTES", MOST + 1, 0)])
    found = guarded(parse, oip_wire.too_many_bytes_elements)
    assert found is not None
    stand_in = found(request.SerializeToString())
    assert isinstance(stand_in, Undecodable)
    assert stand_in.refusal().reason == "INVALID_OIP_INPUT"
    within = guarded(oip.ModelInferRequest.FromString, oip_wire.too_many_bytes_elements)
    assert within is not None
    assert within(_request([("TEXT", "BYTES", MOST, 0)]).SerializeToString()).inputs[0].name == "TEXT"


@pytest.mark.parametrize("elements", [0, 1, MOST])
def test_within_the_limit_is_left_alone(elements: int) -> None:
    assert (
        oip_wire.too_many_bytes_elements(_request([("TEXT", "BYTES", elements, 0)]).SerializeToString())
        is None
    )
