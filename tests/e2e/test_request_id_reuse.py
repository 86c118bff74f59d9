"""A request_id sent again with other inputs is refused (409 REQUEST_ID_REUSED) and records nothing;
sent again with the same request, it is a retry (issue #17). Through Envoy, on the real stack."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import grpc
import pytest

from ferry_client import FerryClient, FerryError
from services.gateway.batch_predictor import item_record_id
from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.e2e.rest import Rest, b64
from tests.e2e.test_jobs import create_job, job_rows, wait_finished
from tests.e2e.test_predict import record_count
from tests.e2e.test_uploads import upload_over_rest

pytestmark = pytest.mark.e2e

PREDICT = "/v1/models/efficientnet-lite0:predict"
MODEL = "efficientnet-lite0"


def refused_as_reused(status: int, body: dict[str, Any]) -> bool:
    """A 409 naming REQUEST_ID_REUSED and telling to use a new request_id."""
    return status == 409 and "REQUEST_ID_REUSED" in json.dumps(body) and "new request_id" in str(body)


def test_predict_with_other_inputs_under_a_used_request_id_is_refused_and_the_record_kept(
    rest: Rest, stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    request_id = f"reuse-{uuid.uuid4()}"
    cat = {"image": {"content": b64(cat_jpeg)}, "request_id": request_id}
    # Sent at once after the first answer: its record may not be in store yet (the race).
    answers = [rest.post(PREDICT, cat) for _ in range(2)]
    assert [status for status, _ in answers] == [200, 200], answers
    first, retry = (answer["prediction"] for _, answer in answers)
    assert retry["name"] == first["name"] and first["classes"][0]["index"] in CAT_CLASSES

    status, body = rest.post(PREDICT, {"image": {"content": b64(coffee_jpeg)}, "request_id": request_id})
    assert refused_as_reused(status, body), (status, body)
    # Other top_k is another request too; the same image and top_k 0 or 5 is the same one.
    assert refused_as_reused(*rest.post(PREDICT, {**cat, "top_k": 2}))
    assert rest.post(PREDICT, {**cat, "top_k": 5})[0] == 200

    prediction_id = uuid.UUID(first["name"].removeprefix("predictions/"))
    assert record_count(stack["database_url"], prediction_id) == 1
    status, stored = rest.get(f"/v1/{first['name']}")
    assert status == 200 and stored["prediction"]["classes"] == first["classes"], stored


def test_predict_over_grpc_is_already_exists_with_the_reason(
    stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    request_id = f"reuse-grpc-{uuid.uuid4()}"
    with FerryClient(stack["grpc_target"], API_KEY) as ferry:
        first = ferry.predict(cat_jpeg, request_id=request_id)
        assert ferry.predict(cat_jpeg, request_id=request_id).name == first.name
        with pytest.raises(FerryError) as refused:
            ferry.predict(coffee_jpeg, request_id=request_id)
    assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert refused.value.reason == "REQUEST_ID_REUSED"


def test_a_refused_request_gives_its_request_id_back(rest: Rest, cat_jpeg: bytes) -> None:
    """A request refused before anything was recorded (here: not an image) leaves the request_id
    free for the corrected request."""
    request_id = f"refused-{uuid.uuid4()}"
    status, body = rest.post(PREDICT, {"image": {"content": b64(b"not an image")}, "request_id": request_id})
    assert status == 400, body
    status, body = rest.post(PREDICT, {"image": {"content": b64(cat_jpeg)}, "request_id": request_id})
    assert status == 200, body


def test_batch_predict_with_other_inputs_under_a_used_request_id_is_refused(
    rest: Rest, stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    request_id = f"reuse-batch-{uuid.uuid4()}"
    path = f"/v1/models/{MODEL}:batchPredict"

    def body(*images: bytes) -> dict[str, Any]:
        return {"inputs": [{"image": {"content": b64(i)}} for i in images], "request_id": request_id}

    status, first = rest.post(path, body(cat_jpeg, coffee_jpeg))
    assert status == 200, first
    status, again = rest.post(path, body(cat_jpeg, coffee_jpeg))
    assert status == 200 and [p["name"] for p in again["predictions"]] == [
        p["name"] for p in first["predictions"]
    ]
    assert refused_as_reused(*rest.post(path, body(coffee_jpeg, cat_jpeg)))

    record = uuid.UUID(first["predictions"][0]["name"].removeprefix("predictions/"))
    assert record_count(stack["database_url"], record) == 1
    status, stored = rest.get(f"/v1/predictions/{record}")
    assert status == 200 and stored["prediction"]["classes"][0]["index"] in CAT_CLASSES, stored


def test_model_infer_with_other_inputs_under_a_used_id_is_refused(
    rest: Rest, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    request_id = f"reuse-oip-{uuid.uuid4()}"

    def infer(image: bytes) -> tuple[int, dict[str, Any]]:
        tensor = {
            "name": "IMAGE",
            "shape": [1],
            "datatype": "BYTES",
            "parameters": {"content_type": "base64"},
            "data": [base64.b64encode(image).decode()],
        }
        return rest.post(f"/v2/models/{MODEL}/infer", {"id": request_id, "inputs": [tensor]})

    assert [infer(coffee_jpeg)[0] for _ in range(2)] == [200, 200]
    status, body = infer(cat_jpeg)  # the protocol's JSON error carries the message only
    assert status == 409 and "use a new id" in body["error"], body
    status, stored = rest.poll(
        f"/v1/predictions/{item_record_id('oip', 'default', request_id, None, 0)}", lambda s, _: s == 200
    )
    assert status == 200 and stored["prediction"]["classes"][0]["index"] == ESPRESSO, stored


def test_create_job_with_other_inputs_under_a_used_request_id_is_refused_and_keeps_its_inputs(
    rest: Rest, stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    request_id = f"reuse-job-{uuid.uuid4()}"
    job = create_job(rest, [coffee_jpeg, coffee_jpeg], request_id=request_id)
    assert create_job(rest, [coffee_jpeg, coffee_jpeg], request_id=request_id)["name"] == job["name"]

    body = {"model": MODEL, "inputs": [{"image": {"content": b64(cat_jpeg)}}] * 2, "request_id": request_id}
    status, answer = rest.post("/v1/jobs", body)
    assert refused_as_reused(status, answer), (status, answer)

    done = wait_finished(rest, job["name"])
    assert (done["state"], done["items_total"]) == ("JOB_STATE_SUCCEEDED", 2), done
    assert [r["item_index"] for r in job_rows(stack["database_url"], job["name"])] == [0, 1]
    status, items = rest.get(f"/v1/predictions?job={job['name']}")
    assert status == 200 and [p["classes"][0]["index"] for p in items["predictions"]] == [ESPRESSO] * 2


def test_create_job_by_another_manifest_under_a_used_request_id_is_refused(
    rest: Rest, stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    manifests = []
    for image in (cat_jpeg, coffee_jpeg):
        line = json.dumps({"content": b64(image)}).encode() + b"\n"
        status, upload = upload_over_rest(stack, line, "application/x-ndjson")
        assert status == 200, upload
        manifests.append(upload["upload"]["name"])
    request_id = f"reuse-manifest-{uuid.uuid4()}"

    def create(manifest: str) -> tuple[int, dict[str, Any]]:
        return rest.post("/v1/jobs", {"model": MODEL, "manifest": manifest, "request_id": request_id})

    status, first = create(manifests[0])
    assert status == 200, first
    status, again = create(manifests[0])
    assert status == 200 and again["job"]["name"] == first["job"]["name"], again
    assert refused_as_reused(*create(manifests[1]))
    done = wait_finished(rest, first["job"]["name"])
    assert (done["state"], done["items_total"]) == ("JOB_STATE_SUCCEEDED", 1), done
