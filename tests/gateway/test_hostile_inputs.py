"""Property-based: no input a caller can send makes the gateway's parsing fail with anything but a 400.

Every function here reads caller-controlled bytes or text (OIP tensors and parameters, JSON
payloads, image URLs, raw protobuf); whatever hypothesis draws, it answers or raises an
INVALID_ARGUMENT FerryError, never another exception (which would be a 500 and a traceback).
tests/e2e/test_hostile.py sends the same kinds of input through Envoy to the running stack.
"""

from __future__ import annotations

import keyword
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.types.v1 import types_pb2
from services.common import limits, nesting, validation
from services.common.errors import FerryError, InvalidArgument
from services.common.fetcher import parse_url
from services.common.interceptors import Undecodable, guarded
from services.gateway.oip_tensors import JSON_INPUT, TENSOR_INPUT, inputs_of
from services.gateway.open_inference import candidate_labels_of, priority_of
from services.jobs import manifests
from tests import hostile
from tests.gateway.servers import serving

BOUNDED = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_invalid_argument(call: Any, *args: Any) -> Any:
    """Runs ``call``: it answers, or refuses with INVALID_ARGUMENT; anything else fails the test."""
    try:
        return call(*args)
    except FerryError as err:
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
        assert err.reason and err.message
        return err


@BOUNDED
@given(
    st.lists(
        st.one_of(
            hostile.json_texts.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=64)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_oip_json_inputs(elements: list[bytes]) -> None:
    tensor = oip.ModelInferRequest.InferInputTensor(name=JSON_INPUT, datatype="BYTES", shape=[len(elements)])
    tensor.contents.bytes_contents.extend(elements)
    only_invalid_argument(inputs_of, oip.ModelInferRequest(inputs=[tensor]), 1 << 20)


@BOUNDED
@given(
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=5),
    st.lists(st.floats(width=32), max_size=16),
    st.booleans(),
)
def test_oip_tensor_shapes(shape: list[int], values: list[float], raw: bool) -> None:
    tensor = oip.ModelInferRequest.InferInputTensor(name=TENSOR_INPUT, datatype="FP32", shape=shape)
    request = oip.ModelInferRequest(inputs=[tensor])
    if raw:
        request.raw_input_contents.append(b"\0" * 4 * len(values))
    else:
        request.inputs[0].contents.fp32_contents.extend(values)
    only_invalid_argument(inputs_of, request, 1 << 20)


def _protobuf_string(text: str) -> bool:
    """Whether a protobuf string can hold ``text`` (no lone surrogate): no caller can send one that cannot."""
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


parameters = st.one_of(
    st.builds(
        lambda v: oip.InferParameter(string_param=v),
        st.one_of(st.text(max_size=30), hostile.json_texts).filter(_protobuf_string),
    ),
    st.builds(lambda v: oip.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: oip.InferParameter(bool_param=v), st.booleans()),
    st.just(oip.InferParameter()),
)


@BOUNDED
@given(parameters)
def test_oip_parameters(value: oip.InferParameter) -> None:
    only_invalid_argument(candidate_labels_of, {"candidate_labels": value})
    only_invalid_argument(priority_of, {"priority": value})


@BOUNDED
@given(hostile.urls)
def test_image_urls(uri: str) -> None:
    only_invalid_argument(parse_url, uri)


@BOUNDED
@given(st.one_of(hostile.nested(), hostile.json_values.filter(lambda v: isinstance(v, dict))))
def test_payloads_past_the_depth_limit_are_nesting_too_deep(value: dict[str, Any]) -> None:
    request = model_service_pb2.PredictRequest()
    try:
        request.payload.SetInParent()  # {} is a payload too
        request.payload.update(value)  # in place: copying a message this deep would parse it
    except (ValueError, OverflowError):
        return  # protobuf cannot hold it (a lone surrogate, a huge integer): no caller can send it
    answer = only_invalid_argument(validation.predict_input, request, 1 << 20)
    too_deep = nesting.json_depth(value, 1000) > limits.MAX_JSON_DEPTH
    assert (isinstance(answer, InvalidArgument) and answer.reason == "NESTING_TOO_DEEP") == too_deep


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_payload_or_parameters_holding_nan_or_infinity_are_invalid_input(value: float) -> None:
    # Protobuf carries them (native gRPC; a manifest line's 1e999), JSON cannot: inference raised
    # turning the payload into JSON (500); such a job item was retried for 5 minutes.
    request = model_service_pb2.PredictRequest()
    request.payload.update({"a": [1, {"b": value}]})
    refused = only_invalid_argument(validation.predict_input, request, 1 << 20)
    assert isinstance(refused, InvalidArgument) and refused.reason == "INVALID_INPUT", refused
    assert "NaN or infinity" in refused.message and refused.metadata["field"] == "payload"
    item = only_invalid_argument(
        validation.input_item, types_pb2.Input(payload=request.payload), 1 << 20, "inputs[2]"
    )
    assert isinstance(item, InvalidArgument) and item.metadata["field"] == "inputs[2].payload", item
    parameters = struct_pb2.Struct()
    parameters.update({"threshold": value})
    assert isinstance(only_invalid_argument(validation.notebook_parameters, parameters), InvalidArgument)
    request.payload.update({"a": [1, {"b": 1e308}]})
    assert validation.predict_input(request, 1 << 20).payload == request.payload  # finite: taken


@BOUNDED
@given(hostile.json_texts)
def test_depth_checked_json_raises_only_value_errors(text: str) -> None:
    try:
        nesting.loads(text)
    except ValueError:
        pass


@BOUNDED
@given(st.binary(max_size=200))
def test_undecodable_protobuf_is_refused_not_raised(data: bytes) -> None:
    parse = guarded(model_service_pb2.PredictRequest.FromString)
    assert parse is not None
    parsed = parse(data)
    if isinstance(parsed, Undecodable):
        assert parsed.refusal().code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_text_field_of_bad_utf8_is_refused_saying_so() -> None:
    # What ?page_token=%00%ff over REST becomes: a string field with bytes that are not UTF-8.
    field = model_service_pb2.PredictRequest.DESCRIPTOR.fields_by_name["request_id"].number
    parse = guarded(model_service_pb2.PredictRequest.FromString)
    assert parse is not None
    parsed = parse(bytes([field << 3 | 2, 2]) + b"\x00\xff")
    assert isinstance(parsed, Undecodable)
    refusal = parsed.refusal()
    assert refusal.reason == "MALFORMED_REQUEST" and "is not valid UTF-8" in refusal.message, refusal.message


class _Echo(model_service_pb2_grpc.ModelServiceServicer):
    async def Predict(self, request: Any, context: Any) -> model_service_pb2.PredictResponse:
        return model_service_pb2.PredictResponse()


@pytest.fixture
async def echo() -> AsyncIterator[grpc.aio.Channel]:
    def register(server: grpc.aio.Server) -> None:
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_Echo(), server)

    async with serving(register) as target, grpc.aio.insecure_channel(target) as channel:
        yield channel


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (hostile.deep_predict_request(40), "NESTING_TOO_DEEP"),
        (hostile.deep_predict_request(2000), "NESTING_TOO_DEEP"),
        (b"\x0a\xff\xff\xff\xff\x0f", "MALFORMED_REQUEST"),  # a length past the end
        (b"\xff\xff", "MALFORMED_REQUEST"),
    ],
)
async def test_native_grpc_bytes_protobuf_cannot_parse_are_400(
    echo: grpc.aio.Channel, body: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    call = echo.unary_unary("/ferry.models.v1.ModelService/Predict")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(body)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == reason
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


@BOUNDED
@given(hostile.json_texts)
def test_manifest_lines_are_items_or_invalid_manifest(line: str) -> None:
    answer = only_invalid_argument(manifests._parse_line, line, "line 1")
    if isinstance(answer, FerryError):
        assert answer.reason in ("INVALID_MANIFEST", "NESTING_TOO_DEEP")


@BOUNDED
@given(st.dictionaries(hostile.texts(max_size=12), hostile.json_scalars, max_size=3))
def test_notebook_parameters_are_python_names_or_invalid_argument(parameters: dict[str, Any]) -> None:
    struct = struct_pb2.Struct()
    try:
        struct.update(parameters)
    except (ValueError, TypeError):  # no Struct holds it (a huge integer): no request can carry it
        return
    answer = only_invalid_argument(validation.notebook_parameters, struct)
    if not isinstance(answer, FerryError):  # papermill writes each as `name = value`: names only
        assert all(name.isidentifier() and not keyword.iskeyword(name) for name in parameters), parameters
