"""Every shipped model through the real stack: REST via Envoy, native gRPC, and their records."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ferry_client import FerryClient
from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.e2e.rest import Rest, b64

pytestmark = pytest.mark.e2e

CAT_SENTENCE = "a cat sleeping on a sofa"


def predict(rest: Rest, model: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = rest.post(f"/v1/models/{model}:predict", body)
    assert status == 200, answer
    prediction: dict[str, Any] = answer["prediction"]
    assert prediction["state"] == "PREDICTION_STATE_SUCCEEDED"
    return prediction


def stored(rest: Rest, prediction: dict[str, Any]) -> dict[str, Any]:
    """The prediction as GetPrediction answers it once the store has it."""
    status, body = rest.poll(f"/v1/{prediction['name']}", lambda s, _: s == 200)
    assert status == 200, body
    record: dict[str, Any] = body["prediction"]
    return record


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_model_metadata_over_rest(rest: Rest) -> None:
    status, body = rest.get("/v1/models/mobilenet-v2")
    assert status == 200, body
    model = body["model"]
    assert (model["state"], model["task"], model["labels_count"], model["version"]) == (
        "MODEL_STATE_READY",
        "image-classification",
        1000,
        "1",
    )
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["1"]}]
    assert model["device"] and model["max_batch_size"] >= 1 and model["max_queue"] >= 1
    assert model["batch_size_source"] in ("measured", "configured") and model["graph"] == "torchscript"
    # The shipped models.toml serves efficientnet-lite0 from its AOTInductor library (built by
    # `make install`), mobilenet-v2 from its TorchScript graph.
    status, body = rest.get("/v1/models/efficientnet-lite0")
    assert status == 200 and body["model"]["graph"] == "aoti", body
    status, body = rest.get("/v1/models/imagenet-ensemble")
    assert status == 200 and body["model"]["members"] == ["models/efficientnet-lite0", "models/mobilenet-v2"]


def test_mobilenet_v2_classifies_the_cat_over_rest(rest: Rest, cat_jpeg: bytes, coffee_jpeg: bytes) -> None:
    cat = predict(rest, "mobilenet-v2", {"image": {"content": b64(cat_jpeg)}, "top_k": 3})
    assert cat["classes"][0]["index"] in CAT_CLASSES and cat["classes"][0]["label"] == "Egyptian cat"
    coffee = predict(rest, "mobilenet-v2", {"image": {"content": b64(coffee_jpeg)}, "top_k": 1})
    assert coffee["classes"][0]["index"] == ESPRESSO


def test_minilm_embeddings_over_rest_are_recorded(rest: Rest) -> None:
    cat, kitten, tax = (
        predict(rest, "minilm", {"text": {"content": text}})
        for text in (CAT_SENTENCE, "a kitten napping on a couch", "quarterly tax filing deadline")
    )
    assert len(cat["embedding"]) == 384 and not cat["classes"]
    assert sum(x * x for x in cat["embedding"]) == pytest.approx(1.0, abs=1e-3)
    assert cosine(cat["embedding"], kitten["embedding"]) == pytest.approx(0.78, abs=0.05)
    assert cosine(cat["embedding"], tax["embedding"]) == pytest.approx(0.06, abs=0.05)
    assert stored(rest, cat)["embedding"] == pytest.approx(cat["embedding"], abs=1e-6)


def test_minilm_zero_shot_over_rest(rest: Rest) -> None:
    body = {"text": {"content": CAT_SENTENCE, "candidate_labels": ["tax", "animal"]}}
    prediction = predict(rest, "minilm", body)
    assert [c["label"] for c in prediction["classes"]] == ["animal", "tax"]
    assert prediction["classes"][0]["score"] > prediction["classes"][1]["score"]
    assert [c["label"] for c in stored(rest, prediction)["classes"]] == ["animal", "tax"]


def test_the_ensemble_answers_with_member_timings(rest: Rest, cat_jpeg: bytes) -> None:
    prediction = predict(rest, "imagenet-ensemble", {"image": {"content": b64(cat_jpeg)}, "top_k": 3})
    assert prediction["classes"][0]["index"] in CAT_CLASSES
    members = prediction["members"]
    assert [m["model"] for m in members] == ["efficientnet-lite0", "mobilenet-v2"]
    assert all(m["timing"]["inference_ms"] > 0 for m in members)
    assert [m["model"] for m in stored(rest, prediction)["members"]] == ["efficientnet-lite0", "mobilenet-v2"]


def test_the_notebook_model_takes_and_answers_json(rest: Rest, coffee_jpeg: bytes) -> None:
    prediction = predict(rest, "agree", {"payload": {"image": b64(coffee_jpeg)}})
    output = prediction["output"]
    assert output["agreed"] is True and output["label"] == "espresso"
    assert output["summary"].startswith("Both models see espresso")
    assert stored(rest, prediction)["output"] == output
    status, body = rest.post("/v1/models/agree:predict", {"payload": {"picture": "none"}})
    assert status == 400 and '"image"' in body["message"], body


def test_a_predict_takes_exactly_one_input(rest: Rest, cat_jpeg: bytes) -> None:
    both = {"image": {"content": b64(cat_jpeg)}, "text": {"content": "a cat"}}
    status, body = rest.post("/v1/models/efficientnet-lite0:predict", both)
    assert status == 400 and "exactly one of image, text, payload or tensor" in body["message"], body
    status, body = rest.post("/v1/models/efficientnet-lite0:predict", {"text": {"content": "a cat"}})
    assert status == 400 and "takes image or tensor" in body["message"], body


def test_python_client_sends_texts_and_json_over_grpc(stack: dict[str, Any], cat_jpeg: bytes) -> None:
    with FerryClient(stack["grpc_target"], API_KEY) as ferry:
        embedding = ferry.predict_text(CAT_SENTENCE).embedding
        assert len(embedding) == 384
        zero_shot = ferry.predict_text(CAT_SENTENCE, candidate_labels=["quarterly tax filing", "animal"])
        assert zero_shot.classes[0].label == "animal"
        answer = ferry.predict_json({"image": b64(cat_jpeg), "top_k": 2}, model="agree")
        assert set(answer["scores"]) == {"efficientnet-lite0", "mobilenet-v2"}
        assert answer["summary"].endswith(".")
        ensemble = ferry.predict(cat_jpeg, model="imagenet-ensemble")
        assert [m.model for m in ensemble.members] == ["efficientnet-lite0", "mobilenet-v2"]
