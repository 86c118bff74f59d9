"""The Open Inference Protocol over REST on the public port: tritonclient.http, and plain JSON."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.gateway.batch_predictor import item_record_id
from services.inference.preprocessing import ImageTransform
from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.e2e.rest import Rest
from tests.e2e.test_open_inference import PEER_PYTHON

pytestmark = pytest.mark.e2e

MODEL = "efficientnet-lite0"
#: An input that would be refused later: what a request is refused for first is what it says.
_NOT_AN_IMAGE = {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["x"]}


def _http(
    stack: dict[str, Any],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request through Envoy, as curl sends it; (status, headers, body)."""
    sent = {"authorization": f"Bearer {API_KEY}", **(headers or {})}
    request = urllib.request.Request(stack["http_url"] + path, data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _json(
    stack: dict[str, Any], method: str, path: str, document: Any = None, **headers: str
) -> tuple[int, Any]:
    body = json.dumps(document).encode() if document is not None else None
    status, _, answer = _http(stack, method, path, body, {"content-type": "application/json", **headers})
    return status, json.loads(answer)


def test_tritonclient_http_classifies_a_real_photo_through_envoy(
    stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes, tmp_path: Path
) -> None:
    assert PEER_PYTHON.exists(), "run `make install`: it makes .venv-peer with tritonclient"
    (tmp_path / "cat.jpg").write_bytes(cat_jpeg)
    np.save(tmp_path / "pixels.npy", ImageTransform().decode(coffee_jpeg)[None])
    script = Path(__file__).with_name("triton_http_client.py")
    target = stack["http_url"].removeprefix("http://")
    done = subprocess.run(
        [
            str(PEER_PYTHON),
            str(script),
            target,
            API_KEY,
            MODEL,
            str(tmp_path / "cat.jpg"),
            str(tmp_path / "pixels.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["server"]["name"] == "ferry" and "binary_tensor_data" in seen["server"]["extensions"]
    assert seen["metadata"]["versions"] == ["1"]
    assert {"name": "IMAGE", "datatype": "BYTES", "shape": [-1]} in seen["metadata"]["inputs"]
    # tritonclient.http's default: every output as binary data after the JSON.
    assert seen["binary_labels"][0][0] in {"tiger cat", "Egyptian cat", "tabby"}
    assert len(seen["binary_scores"][0]) == 3 and seen["binary_scores"][0] == sorted(
        seen["binary_scores"][0], reverse=True
    )
    assert seen["binary_id"] == "triton-http"
    assert all("binary_data_size" in o["parameters"] for o in seen["binary_outputs"])
    # LABELS asked for as JSON, SCORES as binary: each as asked.
    outputs = {o["name"]: o for o in seen["json_outputs"]}
    assert "data" in outputs["LABELS"] and "binary_data_size" in outputs["SCORES"]["parameters"]
    assert seen["json_labels"][0][0] in {"tiger cat", "Egyptian cat", "tabby"}
    assert seen["tensor_classes"][0][0] == ESPRESSO  # FP32 pixels sent as JSON numbers
    assert seen["live_without_key"] is True and "API key" in seen["unauthenticated"]
    assert "resnet-9000" in seen["unknown_model"]
    assert seen["unknown_version_ready"] is False
    assert "PIXELS" in seen["bad_input"]


def test_plain_json_infers_on_base64_and_fp32_inputs_and_is_recorded(
    stack: dict[str, Any], rest: Rest, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    image = {
        "name": "IMAGE",
        "shape": [2],
        "datatype": "BYTES",
        "parameters": {"content_type": "base64"},
        "data": [base64.b64encode(cat_jpeg).decode(), base64.b64encode(coffee_jpeg).decode()],
    }
    status, answer = _json(
        stack,
        "POST",
        f"/v2/models/{MODEL}/infer",
        {
            "id": "rest-json-1",
            "inputs": [image],
            "outputs": [{"name": "CLASS_INDICES"}],
            "parameters": {"top_k": 2},
        },
    )
    assert status == 200, answer
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (MODEL, "1", "rest-json-1")
    [indices] = answer["outputs"]
    assert (indices["name"], indices["datatype"], indices["shape"]) == ("CLASS_INDICES", "INT64", [2, 2])
    assert indices["data"][0] in CAT_CLASSES and indices["data"][2] == ESPRESSO

    pixels = ImageTransform().decode(coffee_jpeg)
    tensor = {"name": "TENSOR", "shape": [1, *pixels.shape], "datatype": "FP32", "data": pixels.tolist()}
    status, answer = _json(stack, "POST", f"/v2/models/{MODEL}/versions/1/infer", {"inputs": [tensor]})
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["LABELS"]["data"][0] == "espresso" and outputs["SCORES"]["datatype"] == "FP32"

    # Recorded like any other OIP call: the record's id follows from the request's id.
    record = f"/v1/predictions/{item_record_id('oip', 'default', 'rest-json-1', None, 1)}"
    status, found = rest.poll(record, lambda code, _: code == 200)
    assert status == 200, found
    assert found["prediction"]["source"] == "PREDICTION_SOURCE_OIP"
    assert found["prediction"]["classes"][0]["index"] == ESPRESSO


def test_binary_request_without_tritonclient(stack: dict[str, Any], cat_jpeg: bytes) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(cat_jpeg)},
                }
            ],
            "outputs": [{"name": "SCORES", "parameters": {"binary_data": True}}, {"name": "LABELS"}],
        }
    ).encode()
    body = header + len(cat_jpeg).to_bytes(4, "little") + cat_jpeg
    status, headers, answer = _http(
        stack,
        "POST",
        f"/v2/models/{MODEL}/infer",
        body,
        {"inference-header-content-length": str(len(header))},
    )
    assert status == 200, answer
    length = int(headers["inference-header-content-length"])
    document = json.loads(answer[:length])
    scores, labels = document["outputs"]
    assert scores["parameters"]["binary_data_size"] == len(answer) - length == 4 * 5
    values = np.frombuffer(answer[length:], dtype="<f4")
    assert list(values) == sorted(values, reverse=True) and labels["data"][0] in {
        "tiger cat",
        "Egyptian cat",
        "tabby",
    }


def test_health_and_metadata_in_the_protocols_json(stack: dict[str, Any]) -> None:
    assert _json(stack, "GET", "/v2/health/live") == (200, {"live": True})
    assert _json(stack, "GET", "/v2/health/ready") == (200, {"ready": True})
    # Probes carry no key: server health answers without one (as Triton's and KServe's do).
    assert _json(stack, "GET", "/v2/health/ready", authorization="") == (200, {"ready": True})
    status, versions = _json(stack, "GET", "/v2/models/mobilenet-v2")
    assert status == 200 and versions["versions"] == ["1", "2"], versions
    assert _json(stack, "GET", f"/v2/models/{MODEL}/ready") == (200, {"name": MODEL, "ready": True})
    status, server = _json(stack, "GET", "/v2")
    assert status == 200 and server["name"] == "ferry"
    status, metadata = _json(stack, "GET", f"/v2/models/{MODEL}/versions/1")
    assert status == 200 and metadata["name"] == MODEL and metadata["platform"] == "pytorch"
    assert {"name": "TENSOR", "datatype": "FP32", "shape": [-1, 3, -1, -1]} in metadata["inputs"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "code", "words"),
    [
        ("GET", f"/v2/models/{MODEL}", None, {"authorization": ""}, 401, "API key"),
        ("GET", "/v2/models/resnet-9000", None, {}, 404, "resnet-9000"),
        ("GET", f"/v2/models/{MODEL}/versions/7", None, {}, 404, "version"),
        ("GET", f"/v2/models/{MODEL}/versions/7/ready", None, {}, 404, "version"),
        ("GET", "/v2/nowhere", None, {}, 404, "/v2/nowhere"),
        ("POST", f"/v2/models/{MODEL}/infer", b"{not json", {}, 400, "not JSON"),
        ("POST", f"/v2/models/{MODEL}/infer", b'{"inputs": []}', {}, 400, "inputs"),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["no image"]}]}',
            {},
            400,
            "IMAGE[0]",
        ),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            b'{"inputs": []}',
            {"inference-header-content-length": "99"},
            400,
            "Inference-Header-Content-Length",
        ),
        # Session 10. '²' (UTF-8, as a header's bytes): int() refused what isdigit() took, a 500.
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            b'{"inputs": []}',
            {"inference-header-content-length": "\xc2\xb2"},
            400,
            "Inference-Header-Content-Length",
        ),
        # 50,000 dimensions held the gateway's event loop 12.7 s while it multiplied them out.
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            json.dumps(
                {"inputs": [{"name": "IMAGE", "shape": [2**62] * 50_000, "datatype": "BYTES", "data": ["x"]}]}
            ).encode(),
            {},
            400,
            "50000 dimensions; the limit is 16",
        ),
        # Session 10: a request's id is its records' request_id: 10 KB and 1 MB ids were echoed.
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            json.dumps({"id": "x" * 10_000, "inputs": [_NOT_AN_IMAGE]}).encode(),
            {},
            400,
            "id is 10000 characters; the limit is 128",
        ),
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            json.dumps({"id": "a\x00b", "inputs": [_NOT_AN_IMAGE]}).encode(),
            {},
            400,
            "id holds a NUL character",
        ),
        # 200,000 outputs: 12 s of the loop, and 200,000 copies of LABELS answered. Unnamed here: named,
        # their 400,000 strings are refused by their count first (limits.MAX_OIP_BODY_STRINGS).
        (
            "POST",
            f"/v2/models/{MODEL}/infer",
            json.dumps(
                {
                    "inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["x"]}],
                    "outputs": [{}] * 200_000,
                }
            ).encode(),
            {},
            400,
            '"outputs" has 200000 entries',
        ),
    ],
)
def test_errors_are_the_protocols_shape_with_http_codes(
    stack: dict[str, Any],
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    code: int,
    words: str,
) -> None:
    status, answer_headers, answer = _http(stack, method, path, body, headers)
    assert status == code, answer
    document = json.loads(answer)
    assert list(document) == ["error"] and words in document["error"], document
    assert answer_headers["content-type"] == "application/json"
