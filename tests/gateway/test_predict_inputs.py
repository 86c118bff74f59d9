"""A Predict carries exactly one input: an image, a text, a JSON payload or a tensor."""

from __future__ import annotations

import pytest

from ferry.models.v1 import model_service_pb2 as pb
from ferry.types.v1 import types_pb2
from services.common import validation
from services.common.errors import InvalidArgument


def test_each_kind_of_input_passes_through() -> None:
    image = validation.predict_input(pb.PredictRequest(image=types_pb2.Image(content=b"jpeg")), 100)
    assert image.image.content == b"jpeg"
    text = types_pb2.Text(content="a cat", candidate_labels=["animal"])
    assert validation.predict_input(pb.PredictRequest(text=text), 100).text == text
    request = pb.PredictRequest()
    request.payload.update({"image": "abc"})
    assert validation.predict_input(request, 100).payload["image"] == "abc"
    tensor = types_pb2.Tensor(datatype="FP32", shape=[2], fp32_contents=[1, 2])
    assert validation.predict_input(pb.PredictRequest(tensor=tensor), 100).tensor == tensor


@pytest.mark.parametrize(
    ("request_", "reason", "words"),
    [
        (pb.PredictRequest(), "MISSING_IMAGE", "exactly one of image, text, payload or tensor"),
        (
            pb.PredictRequest(image=types_pb2.Image(content=b"x"), text=types_pb2.Text(content="y")),
            "INVALID_INPUT",
            "image and text",
        ),
        (pb.PredictRequest(text=types_pb2.Text(content="  ")), "MISSING_TEXT", "text.content is empty"),
        (pb.PredictRequest(text=types_pb2.Text(content="x" * 10_001)), "TEXT_TOO_LONG", "10000"),
        (
            pb.PredictRequest(text=types_pb2.Text(content="x", candidate_labels=["l"] * 65)),
            "TOO_MANY_LABELS",
            "64",
        ),
        (
            pb.PredictRequest(tensor=types_pb2.Tensor(datatype="FP32", shape=[64], fp32_contents=[0.0] * 64)),
            "INPUT_TOO_LARGE",
            "limit is 100 bytes",
        ),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(request_: pb.PredictRequest, reason: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.predict_input(request_, 100)
    assert caught.value.reason == reason
    assert words in str(caught.value)


@pytest.mark.parametrize("version", ["v 2", "x" * 65, "2/../1"])
def test_a_malformed_version_names_where_the_models_versions_are_listed(version: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        validation.model_version(version, "efficientnet-lite0")
    assert refused.value.reason == "INVALID_MODEL_VERSION"
    assert "GET /v1/models/efficientnet-lite0 lists its versions" in str(refused.value)


def test_an_empty_version_is_the_default_unless_one_is_required() -> None:
    assert validation.model_version("", "efficientnet-lite0") == ""
    with pytest.raises(InvalidArgument, match="version is empty"):
        validation.model_version("", "efficientnet-lite0", required=True)
