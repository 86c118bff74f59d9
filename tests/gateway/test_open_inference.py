"""The Open Inference Protocol's encodings: raw BYTES tensors, parameters, outputs."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from ferry.inference.v1 import inference_service_pb2
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.types.v1 import types_pb2
from services.common import limits
from services.common.errors import FerryError
from services.gateway.oip_tensors import (
    check_request_size,
    decode_bytes_tensor,
    encode_bytes_tensor,
    inputs_of,
    output_tensors,
    tensor_array,
)
from services.gateway.open_inference import candidate_labels_of, priority_of


def test_raw_bytes_tensors_round_trip_as_tritonclient_encodes_them() -> None:
    elements = [b"", b"\x00\xff", b"tiger cat"]
    raw = encode_bytes_tensor(elements)
    assert raw[:4] == b"\x00\x00\x00\x00"  # a 4-byte little-endian length before each element
    assert decode_bytes_tensor(raw) == elements


@pytest.mark.parametrize("raw", [b"\x05\x00\x00\x00abc", b"\x01\x00"])
def test_a_truncated_raw_tensor_is_invalid(raw: bytes) -> None:
    with pytest.raises(FerryError) as caught:
        decode_bytes_tensor(raw)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (oip.InferParameter(string_param="HIGH"), types_pb2.PRIORITY_HIGH),
        (oip.InferParameter(string_param="low"), types_pb2.PRIORITY_LOW),
        (oip.InferParameter(int64_param=1), types_pb2.PRIORITY_HIGH),
        (oip.InferParameter(int64_param=2), types_pb2.PRIORITY_NORMAL),
        (oip.InferParameter(int64_param=9), types_pb2.PRIORITY_LOW),
        (oip.InferParameter(int64_param=0), types_pb2.PRIORITY_UNSPECIFIED),
    ],
)
def test_priority_accepts_names_and_tritons_numbers(value: oip.InferParameter, expected: int) -> None:
    assert priority_of({"priority": value}) == expected


@pytest.mark.parametrize(
    "value",
    [
        oip.InferParameter(string_param="urgent"),
        oip.InferParameter(bool_param=True),
        oip.InferParameter(int64_param=-1),
    ],
)
def test_an_unknown_priority_is_invalid_naming_the_valid_ones(value: oip.InferParameter) -> None:
    # "urgent" was answered "parameter 'priority' must be an integer", naming no name it takes.
    with pytest.raises(FerryError) as caught:
        priority_of({"priority": value})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "high, normal or low" in caught.value.message, caught.value.message


def test_shape_must_match_the_elements() -> None:
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="IMAGE",
        datatype="BYTES",
        shape=[3],
        contents=oip.InferTensorContents(bytes_contents=[b"a", b"b"]),
    )
    with pytest.raises(FerryError) as caught:
        inputs_of(oip.ModelInferRequest(inputs=[tensor]), max_bytes=1024)
    assert "shape [3] but 2 elements" in caught.value.message


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_a_bytes_input_of_too_many_elements_is_refused_before_they_are_read(raw: bool) -> None:
    """16 MiB of one-byte elements is 3.3 million: they were split (raw) or listed (typed) one by
    one on the gateway's event loop before their count was checked. Raw: the elements past the
    bound end in a truncated one, which a full read would have been refused for instead."""
    many = [b"x"] * (limits.MAX_INPUTS_PER_REQUEST + 1)
    tensor = oip.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1])
    if raw:
        request = oip.ModelInferRequest(
            inputs=[tensor], raw_input_contents=[encode_bytes_tensor(many) + b"\x09"]
        )
    else:
        tensor.contents.bytes_contents.extend(many)
        request = oip.ModelInferRequest(inputs=[tensor])
    with pytest.raises(FerryError) as caught:
        inputs_of(request, max_bytes=1024)
    assert f"items; send 1 to {limits.MAX_INPUTS_PER_REQUEST}" in caught.value.message, caught.value.message


def test_raw_outputs_decode_to_the_classes_in_order() -> None:
    result = inference_service_pb2.PredictResult(
        classes=[
            types_pb2.ClassScore(label="espresso", score=0.9, index=967),
            types_pb2.ClassScore(label="cup", score=0.05, index=968),
        ]
    )
    tensors, raw = output_tensors([result, result], ["SCORES", "LABELS"], raw=True)
    assert [(t.name, list(t.shape)) for t in tensors] == [("SCORES", [2, 2]), ("LABELS", [2, 2])]
    assert np.frombuffer(raw[0], dtype="<f4").reshape(2, 2)[1].tolist() == pytest.approx([0.9, 0.05])
    assert decode_bytes_tensor(raw[1]) == [b"espresso", b"cup", b"espresso", b"cup"]
    with pytest.raises(FerryError):
        output_tensors([result], ["PROBABILITIES"], raw=False)


def fp32_input(shape: list[int], **contents: object) -> oip.ModelInferRequest:
    tensor = oip.ModelInferRequest.InferInputTensor(name="TENSOR", datatype="FP32", shape=shape)
    return oip.ModelInferRequest(inputs=[tensor], **contents)  # type: ignore[arg-type]


def test_an_fp32_tensor_splits_into_items_raw_or_typed() -> None:
    values = np.arange(2 * 3 * 4, dtype="<f4").reshape(2, 3, 4)
    raw = inputs_of(fp32_input([2, 3, 4], raw_input_contents=[values.tobytes()]), max_bytes=1024)
    typed_request = fp32_input([2, 3, 4])
    typed_request.inputs[0].contents.fp32_contents.extend(values.ravel().tolist())
    typed = inputs_of(typed_request, max_bytes=1024)
    assert (raw.raw, typed.raw) == (True, False)
    for inputs in (raw, typed):
        assert [list(i.tensor.shape) for i in inputs.items] == [[3, 4], [3, 4]]
        assert np.array_equal(tensor_array(inputs.items[1].tensor), values[1])


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (fp32_input([12], raw_input_contents=[b"\x00" * 48]), "send [n, ...]"),
        (fp32_input([2, 3], raw_input_contents=[b"\x00" * 20]), "needs 24"),
        (fp32_input([1, 3]), "needs 3"),
        (fp32_input([1, 300], raw_input_contents=[b"\x00" * 1200]), "the limit is 1024"),
    ],
)
def test_an_fp32_tensor_that_does_not_fit_its_shape_is_invalid(
    request_: oip.ModelInferRequest, says: str
) -> None:
    with pytest.raises(FerryError) as caught:
        inputs_of(request_, max_bytes=1024)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert says in caught.value.message


@pytest.mark.parametrize("name", ["TEXT", "TENSOR"])
def test_contents_and_raw_contents_together_are_invalid(name: str) -> None:
    # Both once passed, one of them silently ignored: which did the client mean?
    datatype = "FP32" if name == "TENSOR" else "BYTES"
    request = oip.ModelInferRequest(
        raw_input_contents=[encode_bytes_tensor([b"raw"]) if name == "TEXT" else b"\0" * 4]
    )
    tensor = request.inputs.add(name=name, datatype=datatype, shape=[1] if name == "TEXT" else [1, 1])
    if name == "TEXT":
        tensor.contents.bytes_contents.append(b"typed")
    else:
        tensor.contents.fp32_contents.append(1.0)
    with pytest.raises(FerryError) as caught:
        inputs_of(request, max_bytes=1024)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "both contents and raw_input_contents" in caught.value.message


@pytest.mark.parametrize("shape", [[-1, -1], [-1, -2, -1, 1, 1, 1, 1, -1, -2, -1, -1, 1]])
def test_a_bytes_input_with_negative_dimensions_is_invalid(shape: list[int]) -> None:
    # Their product is the element count (1, 4): once accepted and run, as Triton refuses.
    count = math.prod(shape)
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="TEXT",
        datatype="BYTES",
        shape=shape,
        contents=oip.InferTensorContents(bytes_contents=[b"a"] * count),
    )
    with pytest.raises(FerryError) as caught:
        inputs_of(oip.ModelInferRequest(inputs=[tensor]), max_bytes=1024)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "none is negative" in caught.value.message


def test_an_input_of_the_wrong_datatype_is_told_which_input_to_use() -> None:
    tensor = oip.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="FP32", shape=[1, 3])
    with pytest.raises(FerryError) as caught:
        inputs_of(oip.ModelInferRequest(inputs=[tensor]), max_bytes=1024)
    assert "send FP32 items as input 'TENSOR'" in caught.value.message


def test_an_empty_image_says_where_an_oip_caller_puts_one() -> None:
    # It said "send … in IMAGE[0].content (base64 in JSON)": Ferry's REST shape, not the protocol's.
    empty = oip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1], contents=oip.InferTensorContents(bytes_contents=[b""])
    )
    with pytest.raises(FerryError) as caught:
        inputs_of(oip.ModelInferRequest(inputs=[empty]), 1024)
    assert caught.value.reason == "MISSING_IMAGE"
    assert "IMAGE[0] is missing or empty" in caught.value.message
    assert "as each element of the BYTES input 'IMAGE'" in caught.value.message
    assert ".content" not in caught.value.message


def test_texts_and_json_objects_become_their_inputs() -> None:
    texts = oip.ModelInferRequest.InferInputTensor(
        name="TEXT",
        datatype="BYTES",
        shape=[2],
        contents=oip.InferTensorContents(bytes_contents=[b"a cat", b"tax"]),
    )
    items = inputs_of(oip.ModelInferRequest(inputs=[texts]), 1024, ["animal", "money"]).items
    assert [(i.text.content, list(i.text.candidate_labels)) for i in items] == [
        ("a cat", ["animal", "money"]),
        ("tax", ["animal", "money"]),
    ]
    payload = oip.ModelInferRequest.InferInputTensor(
        name="JSON",
        datatype="BYTES",
        shape=[1],
        contents=oip.InferTensorContents(bytes_contents=[b'{"x": 1}']),
    )
    [item] = inputs_of(oip.ModelInferRequest(inputs=[payload]), 1024).items
    assert item.payload["x"] == 1
    bad = oip.ModelInferRequest.InferInputTensor(
        name="TEXT", datatype="BYTES", shape=[1], contents=oip.InferTensorContents(bytes_contents=[b"\xff"])
    )
    with pytest.raises(FerryError, match="not UTF-8"):
        inputs_of(oip.ModelInferRequest(inputs=[bad]), 1024)


@pytest.mark.parametrize(
    ("value", "labels"),
    [("animal, money", ["animal", "money"]), ('["a, b", "c"]', ["a, b", "c"])],
)
def test_candidate_labels_are_a_list_or_comma_separated(value: str, labels: list[str]) -> None:
    assert candidate_labels_of({"candidate_labels": oip.InferParameter(string_param=value)}) == labels


def test_embeddings_and_tensors_become_batched_outputs() -> None:
    results = [
        inference_service_pb2.PredictResult(
            embedding=[0.6, 0.8],
            tensors=[types_pb2.Tensor(name="logits", datatype="FP32", shape=[3], fp32_contents=[i, 0, 1])],
        )
        for i in range(2)
    ]
    tensors, raw = output_tensors(results, [], raw=False)
    assert [(t.name, t.datatype, list(t.shape)) for t in tensors] == [
        ("EMBEDDING", "FP32", [2, 2]),
        ("logits", "FP32", [2, 3]),
    ]
    assert list(tensors[1].contents.fp32_contents) == [0, 0, 1, 1, 0, 1] and raw == []
    _, raw = output_tensors(results, ["EMBEDDING"], raw=True)
    assert np.frombuffer(raw[0], dtype="<f4").tolist() == pytest.approx([0.6, 0.8, 0.6, 0.8])


def test_tritons_uint64_parameters_are_read_though_kserves_proto_lacks_them() -> None:
    # tritonclient's priority=1, timeout=5000: InferParameter field 5 (uint64_param), varints.
    priority = oip.InferParameter.FromString(bytes([5 << 3, 1]))
    assert priority.WhichOneof("parameter_choice") is None
    assert priority_of({"priority": priority}) == types_pb2.PRIORITY_HIGH


@pytest.mark.parametrize(("name", "datatype"), [("IMAGE", "BYTES"), ("TENSOR", "FP32")])
def test_a_shape_of_thousands_of_dimensions_is_refused_before_it_is_multiplied_out(
    name: str, datatype: str
) -> None:
    # 100,000 dimensions of 2**62: multiplying them out held the gateway's event loop for 44-60 s
    # (every other call waited), and a TENSOR's product, too long to print, ended in a 500.
    tensor = oip.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=[2**62] * 100_000)
    with pytest.raises(FerryError) as caught:
        inputs_of(oip.ModelInferRequest(inputs=[tensor]), max_bytes=1024)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_OIP_INPUT"
    assert "100000 dimensions; the limit is 16" in caught.value.message


def test_an_output_asked_for_twice_or_too_many_parameters_are_refused_before_any_work() -> None:
    labels = oip.ModelInferRequest.InferRequestedOutputTensor(name="LABELS")
    twice = oip.ModelInferRequest(outputs=[labels, labels])
    with pytest.raises(FerryError) as caught:
        check_request_size(twice)  # 200,000 asks for LABELS were answered with 200,000 copies
    assert caught.value.reason == "INVALID_OIP_OUTPUT"
    many = oip.ModelInferRequest()
    for i in range(65):
        many.parameters[f"p{i}"].int64_param = i
    with pytest.raises(FerryError) as caught:
        check_request_size(many)
    assert caught.value.reason == "INVALID_OIP_PARAMETER"
    check_request_size(oip.ModelInferRequest(outputs=[labels]))
