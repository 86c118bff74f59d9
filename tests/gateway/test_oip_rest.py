"""The Open Inference Protocol's REST body <-> its gRPC messages (services/gateway/oip_rest.py)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from services.common import limits, nesting
from services.common.errors import InvalidArgument
from services.gateway import oip_rest
from services.gateway.oip_tensors import encode_bytes_tensor

_IMAGE: dict[str, object] = {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["x"]}


def _binary_body(document: dict[str, object], *tensors: bytes) -> tuple[bytes, str]:
    header = json.dumps(document).encode()
    return header + b"".join(tensors), str(len(header))


def test_binary_inputs_become_raw_contents_and_parameters_typed() -> None:
    image = encode_bytes_tensor([b"\xff\xd8jpeg"])
    body, length = _binary_body(
        {
            "id": "r1",
            "parameters": {
                "top_k": 3,
                "priority": "high",
                "binary_data_output": True,
                "candidate_labels": ["a", "b"],
            },
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(image)},
                }
            ],
        },
        image,
    )
    rest = oip_rest.infer_request(body, length, "m", "2")
    request = rest.request
    assert (request.model_name, request.model_version, request.id) == ("m", "2", "r1")
    assert list(request.raw_input_contents) == [image]
    assert request.parameters["top_k"].int64_param == 3
    assert request.parameters["priority"].string_param == "high"
    assert json.loads(request.parameters["candidate_labels"].string_param) == ["a", "b"]
    assert "binary_data_output" not in request.parameters and rest.wants_binary("LABELS")


def test_json_inputs_fill_typed_contents_nested_or_base64() -> None:
    document = {
        "inputs": [
            {"name": "TENSOR", "shape": [1, 2, 2], "datatype": "FP32", "data": [[[1, 2.5], [3, 4]]]},
            {
                "name": "IMAGE",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": ["/9g="],
            },
            {"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["héllo"]},
        ],
        "outputs": [
            {"name": "SCORES", "parameters": {"binary_data": True}},
            {"name": "LABELS", "parameters": {"binary_data": False}},
        ],
    }
    rest = oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")
    tensor, image, text = rest.request.inputs
    assert list(tensor.contents.fp32_contents) == [1.0, 2.5, 3.0, 4.0]
    assert list(image.contents.bytes_contents) == [b"\xff\xd8"]
    assert list(text.contents.bytes_contents) == ["héllo".encode()]
    assert [o.name for o in rest.request.outputs] == ["SCORES", "LABELS"]
    assert rest.wants_binary("SCORES") and not rest.wants_binary("LABELS")


@pytest.mark.parametrize(
    ("body", "length", "words"),
    [
        (b"[1]", None, "JSON list"),
        (b"{", None, "not JSON"),
        (b'{"inputs": []}', None, "inputs"),
        (b'{"inputs": []}', "x", "Inference-Header-Content-Length"),
        (b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES"}]}', None, "neither data"),
        (b'{"inputs": [{"name": "IMAGE", "shape": "1", "datatype": "BYTES", "data": []}]}', None, "shape"),
        (b'{"inputs": [{"name": "T", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', None, "numbers"),
        (b'{"inputs": [{"name": "T", "shape": [1], "datatype": "BF16", "data": [1]}]}', None, "BF16"),
        (
            b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", '
            b'"parameters": {"binary_data_size": 9}}]}',
            None,
            "binary_data_size",
        ),
    ],
)
def test_bad_bodies_say_what_is_wrong(body: bytes, length: str | None, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        oip_rest.infer_request(body, length, "m", "")
    assert words in caught.value.message and caught.value.reason == "INVALID_OIP_REST_BODY"


@pytest.mark.parametrize(
    ("document", "field", "where"),
    [
        ({"inputs": [_IMAGE], "paramters": {"top_k": 1}}, "paramters", "the request"),
        ({"inputs": [{**_IMAGE, "dta": ["x"]}]}, "dta", "inputs[0]"),
        (
            {"inputs": [_IMAGE], "outputs": [{"name": "LABELS", "binary_data": True}]},
            "binary_data",
            "outputs[0]",
        ),
    ],
)
def test_a_misspelt_field_is_refused_naming_it_and_the_fields_there_are(
    document: dict[str, object], field: str, where: str
) -> None:
    """A typo was ignored: "paramters": {"top_k": 1} answered five classes, "dta" said "neither
    data nor parameters.binary_data_size", a misplaced binary_data answered JSON."""
    with pytest.raises(InvalidArgument) as caught:
        oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")
    message = caught.value.message
    assert f"unknown field {field!r} in {where}" in message and "parameters" in message, message
    assert caught.value.reason == "INVALID_OIP_REST_BODY" and caught.value.metadata["field"] == field


def test_the_protocols_own_fields_are_all_taken() -> None:
    """What tritonclient.http and KServe's clients send: id, parameters, inputs, outputs."""
    document = {
        "id": "r1",
        "parameters": {"top_k": 3},
        "inputs": [{**_IMAGE, "parameters": {"content_type": "base64"}, "data": ["eA=="]}],
        "outputs": [{"name": "LABELS", "parameters": {"binary_data": False}}],
    }
    rest = oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")
    assert rest.request.id == "r1" and rest.request.inputs[0].contents.bytes_contents == [b"x"]


def test_unclaimed_binary_data_and_mixed_inputs_are_refused() -> None:
    body, length = _binary_body(
        {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, b"tail"
    )
    with pytest.raises(InvalidArgument, match="no input claims"):
        oip_rest.infer_request(body, length, "m", "")
    mixed = {
        "inputs": [
            {"name": "A", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}},
            {"name": "B", "shape": [1], "datatype": "BYTES", "data": ["x"]},
        ]
    }
    body, length = _binary_body(mixed, encode_bytes_tensor([b"x"]))
    with pytest.raises(InvalidArgument, match="not a mix"):
        oip_rest.infer_request(body, length, "m", "")


def test_classification_output_parameter_is_refused_not_ignored() -> None:
    document = {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    document["outputs"] = [{"name": "LABELS", "parameters": {"classification": 3}}]
    with pytest.raises(InvalidArgument, match="classification"):
        oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")


def _answer(raw: bool) -> oip.ModelInferResponse:
    labels, scores = [b"tabby", b"tiger cat"], np.array([[0.5, 0.25]], dtype="<f4")
    response = oip.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.outputs.add(name="LABELS", datatype="BYTES", shape=[1, 2])
    response.outputs.add(name="SCORES", datatype="FP32", shape=[1, 2])
    if raw:
        response.raw_output_contents.extend([encode_bytes_tensor(labels), scores.tobytes()])
    else:
        response.outputs[0].contents.bytes_contents.extend(labels)
        response.outputs[1].contents.fp32_contents.extend(scores.ravel().tolist())
    return response


@pytest.mark.parametrize("raw", [False, True])
def test_answers_as_json_or_binary_as_asked_whatever_the_grpc_form(raw: bool) -> None:
    request = oip.ModelInferRequest()
    as_json = oip_rest.infer_answer(_answer(raw), oip_rest.RestInfer(request))
    assert as_json.header_length is None and as_json.content_type == "application/json"
    document = json.loads(as_json.body)
    assert document["outputs"][0] == {
        "name": "LABELS",
        "datatype": "BYTES",
        "shape": [1, 2],
        "data": ["tabby", "tiger cat"],
    }
    assert document["outputs"][1]["data"] == [0.5, 0.25]

    binary = oip_rest.infer_answer(_answer(raw), oip_rest.RestInfer(request, binary_outputs={"SCORES"}))
    assert binary.header_length is not None
    head = json.loads(binary.body[: binary.header_length])
    assert head["outputs"][0]["data"] == ["tabby", "tiger cat"]
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(binary.body[binary.header_length :], dtype="<f4").tolist() == [0.5, 0.25]

    everything = oip_rest.infer_answer(
        _answer(raw), oip_rest.RestInfer(request, all_binary=True, json_outputs={"SCORES"})
    )
    assert everything.header_length is not None
    assert everything.body[everything.header_length :] == encode_bytes_tensor([b"tabby", b"tiger cat"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", "NESTING_TOO_DEEP"),
        (
            b'{"parameters": {"top_k": 1'
            + b"0" * 30
            + b'}, "inputs": [{"name": "A", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}',
            "INVALID_OIP_REST_BODY",
        ),
        (
            b'{"inputs": [{"name": "T", "shape": [1], "datatype": "FP32", "data": [1' + b"0" * 400 + b"]}]}",
            "INVALID_OIP_REST_BODY",
        ),
        (
            b'{"inputs": [{"name": "T", "shape": [1], "datatype": "INT32", "data": [1.5]}]}',
            "INVALID_OIP_REST_BODY",
        ),
        (
            b'{"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}',
            "INVALID_OIP_REST_BODY",
        ),
    ],
)
def test_hostile_values_are_400_not_500(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        oip_rest.infer_request(body, None, "m", "")
    assert caught.value.reason == reason


def test_a_base64_image_without_its_content_type_says_to_add_it() -> None:
    """README's /v2 curl without "content_type": "base64" answered "not a decodable image … (base64
    in JSON)": the advice of the other API. A real photo, base64, no content_type: 400 naming it."""
    from pathlib import Path

    heic = (Path(__file__).parent.parent / "fixtures" / "chelsea-sideways.heic").read_bytes()
    jpeg = bytes.fromhex("ffd8ffe000104a464946000101") + b"\x00" * 40
    for photo in (jpeg, heic):
        document = {"inputs": [{**_IMAGE, "data": [base64.b64encode(photo).decode()]}]}
        with pytest.raises(InvalidArgument) as caught:
            oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")
        assert '"content_type": "base64"' in caught.value.message, caught.value.message
    # Text that merely is valid base64 (a TEXT input, or an IMAGE of words) goes on as before.
    for name in ("TEXT", "IMAGE"):
        document = {"inputs": [{**_IMAGE, "name": name, "data": ["abcd", "a cat"]}]}
        rest = oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")
        assert rest.request.inputs[0].contents.bytes_contents == [b"abcd", b"a cat"]


def test_a_length_header_of_non_ascii_digits_is_a_bad_body_not_a_500() -> None:
    # '²'.isdigit() is true and int('²') raises: it was a 500 with a traceback in the gateway's log.
    body, _ = _binary_body({"inputs": [_IMAGE]})
    with pytest.raises(InvalidArgument) as caught:
        oip_rest.infer_request(body, "\u00b2", "m", "")
    assert caught.value.reason == "INVALID_OIP_REST_BODY"


@pytest.mark.parametrize("field", ["inputs", "outputs", "parameters"])
def test_thousands_of_inputs_outputs_or_parameters_are_refused_before_any_is_read(field: str) -> None:
    # 200,000 of them held the gateway's event loop for 2-12 s while every other call waited. Entries
    # that hold few strings: more strings than limits.MAX_OIP_BODY_STRINGS are refused by their count.
    count = 10_000 if field == "parameters" else 200_000
    many: object = {f"p{i}": i for i in range(count)} if field == "parameters" else [{}] * count
    document = {"inputs": [_IMAGE], field: many}
    with pytest.raises(InvalidArgument) as caught:
        oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")
    assert caught.value.reason == "INVALID_OIP_REST_BODY"
    assert f'"{field}" has {count} entries' in caught.value.message


def test_a_bytes_input_of_too_many_elements_is_refused_before_any_is_encoded() -> None:
    # 2.7 million short strings fit in a 15 MiB body, each made a bytes object before the count was
    # checked; the last element here is no string, which a full read would have been refused for.
    data = [["ab"] * 100] * 3 + [[None]]
    document = {"inputs": [{"name": "TEXT", "shape": [301], "datatype": "BYTES", "data": data}]}
    with pytest.raises(InvalidArgument) as caught:
        oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")
    assert (caught.value.reason, caught.value.metadata) == ("INVALID_OIP_INPUT", {"input": "TEXT"})
    assert "has more than 256 items; send 1 to 256" in caught.value.message


def test_a_body_of_more_strings_than_any_request_holds_is_refused_unparsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2.7 million short strings in 15 MiB took the upload lane 0.5-1.7 s and 230 MB to parse.
    def parsed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the body was parsed")

    many = limits.MAX_OIP_BODY_STRINGS + 1
    document = {"inputs": [{"name": "TEXT", "shape": [many], "datatype": "BYTES", "data": ["ab"] * many}]}
    monkeypatch.setattr(nesting, "loads", parsed)
    with pytest.raises(InvalidArgument) as caught:
        oip_rest.infer_request(json.dumps(document).encode(), None, "m", "")
    assert caught.value.reason == "INVALID_OIP_REST_BODY"
    # The items and the 7 names and values around them ("inputs", "name", "TEXT", ...).
    assert f"at least {many + 7} JSON strings; a request may hold at most {many - 1}" in caught.value.message
    assert f"send 1 to {limits.MAX_INPUTS_PER_REQUEST} items per input" in caught.value.message
    # The same JSON before binary data (Inference-Header-Content-Length) is counted alike.
    body = json.dumps(document).encode()
    with pytest.raises(InvalidArgument):
        oip_rest.infer_request(body + b'""' * 10, str(len(body)), "m", "")


def test_the_most_items_of_strings_full_of_quotes_are_not_refused_for_their_count() -> None:
    most = limits.MAX_INPUTS_PER_REQUEST
    quoted = ['say "\\" and \\"x\\"' * 20] * most  # escaped quotes and backslashes in every item
    inputs = [
        {"name": f"T{i}", "shape": [most], "datatype": "BYTES", "data": quoted}
        for i in range(limits.MAX_OIP_TENSORS)
    ]
    rest = oip_rest.infer_request(json.dumps({"inputs": inputs}).encode(), None, "m", "")
    assert len(rest.request.inputs) == limits.MAX_OIP_TENSORS
    assert rest.request.inputs[0].contents.bytes_contents[0] == quoted[0].encode()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)


def _strings(value: object) -> int:
    if isinstance(value, str):
        return 1
    if isinstance(value, list):
        return sum(_strings(v) for v in value)
    if isinstance(value, dict):
        return sum(1 + _strings(v) for v in value.values())
    return 0


@settings(max_examples=300, deadline=None)
@given(_JSON, st.booleans())
def test_the_quote_count_never_exceeds_the_strings_a_json_text_holds(value: object, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert oip_rest.strings_at_least(text) <= _strings(value)
