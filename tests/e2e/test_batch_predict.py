"""``BatchPredict`` through Envoy: REST and native gRPC, answers in order, each one recorded."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from ferry_client import FerryClient
from services.inference.preprocessing import ImageTransform
from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.e2e.rest import Rest, b64

pytestmark = pytest.mark.e2e

BATCH = "/v1/models/efficientnet-lite0:batchPredict"


def image(content: bytes) -> dict[str, Any]:
    return {"image": {"content": b64(content)}}


def test_rest_answers_each_input_in_order_and_a_bad_one_alone(
    rest: Rest, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    inputs = [image(cat_jpeg), image(b"not an image at all"), {"image": {}}, image(coffee_jpeg)]
    status, body = rest.post(BATCH, {"inputs": inputs, "top_k": 3})
    assert status == 200, body
    cat, garbage, empty, coffee = body["predictions"]

    assert cat["state"] == coffee["state"] == "PREDICTION_STATE_SUCCEEDED"
    assert cat["classes"][0]["index"] in CAT_CLASSES and len(cat["classes"]) == 3
    assert coffee["classes"][0]["index"] == ESPRESSO
    assert coffee["timing"]["batch_size"] >= 1 and coffee["timing"]["total_ms"] > 0

    for failed, reason in ((garbage, "INVALID_IMAGE"), (empty, "MISSING_IMAGE")):
        assert failed["state"] == "PREDICTION_STATE_FAILED", failed
        assert failed["error"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert failed["classes"] == []
        assert reason in str(failed["error"]["details"]), failed["error"]
    assert "inputs[1]" in garbage["error"]["message"] and "inputs[2]" in empty["error"]["message"]
    # Inference's own numbering (it was sent 3 of the 4 inputs) does not leak into the message.
    assert garbage["error"]["message"].startswith("inputs[1]: it is not a decodable image")

    # Every answer is recorded, the failed ones too, under the name it was given.
    for answered in (cat, garbage, empty, coffee):
        status, stored = rest.poll(f"/v1/{answered['name']}", lambda s, _: s == 200)
        assert status == 200, stored
        assert stored["prediction"]["state"] == answered["state"]
        assert [c["index"] for c in stored["prediction"]["classes"]] == [
            c["index"] for c in answered["classes"]
        ]


def test_rest_request_id_makes_a_retry_land_on_the_same_records(rest: Rest, cat_jpeg: bytes) -> None:
    body = {"inputs": [image(cat_jpeg), image(cat_jpeg)], "request_id": f"batch-{uuid.uuid4()}"}
    answers = [rest.post(BATCH, body) for _ in range(2)]
    assert [status for status, _ in answers] == [200, 200], answers
    first, second = ([p["name"] for p in answer["predictions"]] for _, answer in answers)
    assert first == second and len(set(first)) == 2


@pytest.mark.parametrize("count", [0, 65])
def test_rest_refuses_a_call_outside_the_input_limit(rest: Rest, cat_jpeg: bytes, count: int) -> None:
    status, body = rest.post(BATCH, {"inputs": [image(cat_jpeg)] * count})
    assert status == 400, body
    assert "1 to 64 inputs" in body["message"]


def test_rest_unknown_model_fails_the_whole_call(rest: Rest, cat_jpeg: bytes) -> None:
    status, body = rest.post("/v1/models/no-such-model:batchPredict", {"inputs": [image(cat_jpeg)]})
    assert status == 404, body


def test_grpc_through_envoy_with_an_image_and_a_tensor(
    stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    # The coffee photo already transformed (what the classifier's preprocessing makes of it).
    pixels = ImageTransform().decode(coffee_jpeg)
    tensor = types_pb2.Tensor(
        datatype="FP32", shape=list(pixels.shape), raw_contents=pixels.astype("<f4").tobytes()
    )
    request = model_service_pb2.BatchPredictRequest(
        model="models/efficientnet-lite0",
        inputs=[
            types_pb2.Input(image=types_pb2.Image(content=cat_jpeg)),
            types_pb2.Input(tensor=tensor),
            types_pb2.Input(text=types_pb2.Text(content="a cup of coffee")),
        ],
        priority=types_pb2.PRIORITY_HIGH,
    )
    with grpc.insecure_channel(stack["grpc_target"]) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        answer = stub.BatchPredict(request, metadata=[("authorization", f"Bearer {API_KEY}")], timeout=60)
    cat, coffee, text = answer.predictions
    assert cat.state == coffee.state == prediction_pb2.PREDICTION_STATE_SUCCEEDED
    assert cat.classes[0].index in CAT_CLASSES and coffee.classes[0].index == ESPRESSO
    assert len(coffee.classes) == 5
    # An image model does not take texts: that input alone fails, saying so.
    assert text.state == prediction_pb2.PREDICTION_STATE_FAILED
    assert text.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "text" in text.error.message


def test_python_client_batch_predicts(stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes) -> None:
    with FerryClient(stack["grpc_target"], API_KEY) as ferry:
        cat, bad, coffee = ferry.batch_predict([cat_jpeg, b"\x00" * 10, coffee_jpeg], top_k=2)
    assert cat.classes[0].index in CAT_CLASSES and coffee.classes[0].index == ESPRESSO
    assert bad.state == prediction_pb2.PREDICTION_STATE_FAILED and not bad.classes
