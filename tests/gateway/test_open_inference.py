"""The Open Inference Protocol's encodings: raw BYTES tensors, parameters, outputs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from ferry.inference.v1 import inference_service_pb2
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.types.v1 import types_pb2
from services.common.errors import FerryError
from services.gateway.open_inference import (
    decode_bytes_tensor,
    encode_bytes_tensor,
    images_of,
    output_tensors,
    priority_of,
)


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


def test_an_unknown_priority_is_invalid() -> None:
    with pytest.raises(FerryError) as caught:
        priority_of({"priority": oip.InferParameter(string_param="urgent")})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_shape_must_match_the_elements() -> None:
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="IMAGE",
        datatype="BYTES",
        shape=[3],
        contents=oip.InferTensorContents(bytes_contents=[b"a", b"b"]),
    )
    with pytest.raises(FerryError) as caught:
        images_of(oip.ModelInferRequest(inputs=[tensor]), max_image_bytes=1024)
    assert "shape [3] but 2 elements" in caught.value.message


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
