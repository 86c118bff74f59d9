"""Large Open Inference Protocol REST bodies are read by the upload lane, not the callers' gateway.

Issue 17: a 15 MiB JSON body of short strings held the gateway's interpreter 0.35 s whatever thread
parsed it, and every other tenant's call to that gateway waited. Envoy now sends a
``/v2/models/{m}/infer`` body of ``FERRY_GATEWAY_OIP_REST_OFF_LOOP_BYTES`` (256 KiB) or more to the
lane's gateway process (devstack/envoy.py). Which process answered is read from each gateway's
access log, by the call's trace id.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from services.gateway.settings import GatewaySettings
from services.inference.preprocessing import ImageTransform
from tests.e2e.expectations import CAT_CLASSES
from tests.e2e.test_oip_rest import MODEL, _http
from tests.e2e.test_uploads import access_logged

pytestmark = pytest.mark.e2e

LARGE = GatewaySettings().oip_rest_off_loop_bytes


def _answered_by(stack: dict[str, Any], document: dict[str, Any]) -> tuple[int, Any, list[str], list[str]]:
    """POSTs ``document`` to the model's infer path; its status, JSON answer, and the codes the
    lane's and the callers' gateway logged for it."""
    logs = Path(stack["logs_dir"])
    lane, gateway = logs / "gateway-uploads.log", logs / "gateway.log"
    since = {log: log.stat().st_size for log in (lane, gateway)}
    trace_id = secrets.token_hex(16)
    headers = {"content-type": "application/json", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    body = json.dumps(document).encode()
    status, _, answer = _http(stack, "POST", f"/v2/models/{MODEL}/infer", body, headers)
    time.sleep(0.5)  # the access line is written as the answer leaves
    lane_codes, gateway_codes = (
        [e["code"] for e in access_logged(log, since[log], trace_id, "InferModel")] for log in (lane, gateway)
    )
    return status, json.loads(answer), lane_codes, gateway_codes


def test_a_large_tensor_body_is_served_by_the_lane(stack: dict[str, Any], cat_jpeg: bytes) -> None:
    pixels = ImageTransform().decode(cat_jpeg)
    tensor = {"name": "TENSOR", "shape": [1, *pixels.shape], "datatype": "FP32", "data": pixels.tolist()}
    document = {"inputs": [tensor], "outputs": [{"name": "CLASS_INDICES"}]}
    assert len(json.dumps(document)) > LARGE
    status, answer, lane, gateway = _answered_by(stack, document)
    assert status == 200, answer
    assert answer["outputs"][0]["data"][0] in CAT_CLASSES
    assert (lane, gateway) == (["OK"], [])


def test_a_large_body_of_strings_is_refused_by_the_lane_in_the_protocols_shape(stack: dict[str, Any]) -> None:
    strings = {"name": "IMAGE", "shape": [100_000], "datatype": "BYTES", "data": ["abc"] * 100_000}
    document = {"inputs": [strings]}
    assert len(json.dumps(document)) > LARGE
    status, answer, lane, gateway = _answered_by(stack, document)
    assert status == 400, answer
    assert list(answer) == ["error"] and "more than 256 items; send 1 to 256" in answer["error"], answer
    assert (lane, gateway) == (["INVALID_ARGUMENT"], [])


def test_a_small_body_is_served_by_the_callers_gateway(stack: dict[str, Any], cat_jpeg: bytes) -> None:
    image = {
        "name": "IMAGE",
        "shape": [1],
        "datatype": "BYTES",
        "parameters": {"content_type": "base64"},
        "data": [base64.b64encode(cat_jpeg).decode()],
    }
    document = {"inputs": [image], "outputs": [{"name": "CLASS_INDICES"}]}
    assert len(json.dumps(document)) < LARGE
    status, answer, lane, gateway = _answered_by(stack, document)
    assert status == 200, answer
    assert answer["outputs"][0]["data"][0] in CAT_CLASSES
    assert (lane, gateway) == ([], ["OK"])
