"""Large Open Inference Protocol bodies are read by the upload lane, not the callers' gateway.

Issue 17: a 15 MiB JSON body of short strings held the gateway's interpreter 0.35 s whatever thread
parsed it, and every other tenant's call to that gateway waited; a native gRPC ``ModelInfer`` of 5
million one-byte BYTES elements held its event loop 0.5 s while gRPC parsed it. Envoy now sends a
``/v2/models/{m}/infer`` body, and a native ``ModelInfer`` message, of
``FERRY_GATEWAY_OIP_REST_OFF_LOOP_BYTES`` (256 KiB) or more to the lane's gateway process
(devstack/envoy.py). Which process answered is read from each gateway's access log, by the call's
trace id.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from services.gateway.settings import GatewaySettings
from services.inference.preprocessing import ImageTransform
from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import CAT_CLASSES
from tests.e2e.test_oip_rest import MODEL, _http
from tests.e2e.test_uploads import access_logged

pytestmark = pytest.mark.e2e
T = TypeVar("T")

LARGE = GatewaySettings().oip_rest_off_loop_bytes


def logged_by(stack: dict[str, Any], method: str, call: Callable[[str], T]) -> tuple[T, list[str], list[str]]:
    """What ``call`` (given a traceparent) returned, and the codes the lane's and the callers'
    gateway logged for ``method`` in its trace."""
    logs = Path(stack["logs_dir"])
    lane, gateway = logs / "gateway-uploads.log", logs / "gateway.log"
    since = {log: log.stat().st_size for log in (lane, gateway)}
    trace_id = secrets.token_hex(16)
    answer = call(f"00-{trace_id}-{secrets.token_hex(8)}-01")
    time.sleep(0.5)  # the access line is written as the answer leaves
    lane_codes, gateway_codes = (
        [e["code"] for e in access_logged(log, since[log], trace_id, method)] for log in (lane, gateway)
    )
    return answer, lane_codes, gateway_codes


def _answered_by(stack: dict[str, Any], document: dict[str, Any]) -> tuple[int, Any, list[str], list[str]]:
    """POSTs ``document`` to the model's infer path; its status, JSON answer, and the codes the
    lane's and the callers' gateway logged for it."""

    def post(traceparent: str) -> tuple[int, Any]:
        headers = {"content-type": "application/json", "traceparent": traceparent}
        status, _, answer = _http(
            stack, "POST", f"/v2/models/{MODEL}/infer", json.dumps(document).encode(), headers
        )
        return status, json.loads(answer)

    (status, answer), lane, gateway = logged_by(stack, "InferModel", post)
    return status, answer, lane, gateway


def _inferred_by(
    stack: dict[str, Any], request: oip.ModelInferRequest
) -> tuple[oip.ModelInferResponse | grpc.RpcError, list[str], list[str]]:
    """Sends ``request`` as a native gRPC ModelInfer; its answer or error, and the codes the lane's
    and the callers' gateway logged for it."""

    def infer(traceparent: str) -> oip.ModelInferResponse | grpc.RpcError:
        metadata = (("authorization", f"Bearer {API_KEY}"), ("traceparent", traceparent))
        with grpc.insecure_channel(stack["grpc_target"]) as channel:
            try:
                return oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    request, metadata=metadata, timeout=60
                )
            except grpc.RpcError as error:
                return error

    return logged_by(stack, "ModelInfer", infer)


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
    assert list(answer) == ["error"] and "send 1 to 256 items" in answer["error"], answer
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


def _class_index(answer: oip.ModelInferResponse) -> int:
    """The top class: in typed contents, or raw (little-endian INT64) when the request's were raw."""
    [at] = [i for i, output in enumerate(answer.outputs) if output.name == "CLASS_INDICES"]
    if answer.raw_output_contents:
        return int(np.frombuffer(answer.raw_output_contents[at], "<i8")[0])
    return int(answer.outputs[at].contents.int64_contents[0])


def test_a_large_native_model_infer_is_served_by_the_lane(stack: dict[str, Any], cat_jpeg: bytes) -> None:
    pixels = ImageTransform().decode(cat_jpeg).astype("<f4")
    tensor = oip.ModelInferRequest.InferInputTensor(name="TENSOR", datatype="FP32", shape=[1, *pixels.shape])
    request = oip.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[pixels.tobytes()])
    assert request.ByteSize() > LARGE
    answer, lane, gateway = _inferred_by(stack, request)
    assert isinstance(answer, oip.ModelInferResponse), answer
    assert _class_index(answer) in CAT_CLASSES
    assert (lane, gateway) == (["OK"], [])


def test_a_large_native_model_infer_of_strings_is_refused_by_the_lane(stack: dict[str, Any]) -> None:
    tensor = oip.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="BYTES", shape=[100_000])
    tensor.contents.bytes_contents.extend([b"abc"] * 100_000)
    request = oip.ModelInferRequest(model_name=MODEL, inputs=[tensor])
    assert request.ByteSize() > LARGE
    error, lane, gateway = _inferred_by(stack, request)
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert (lane, gateway) == (["INVALID_ARGUMENT"], [])


def test_a_small_native_model_infer_is_served_by_the_callers_gateway(
    stack: dict[str, Any], cat_jpeg: bytes
) -> None:
    image = oip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1], contents=oip.InferTensorContents(bytes_contents=[cat_jpeg])
    )
    request = oip.ModelInferRequest(model_name=MODEL, inputs=[image])
    assert request.ByteSize() < LARGE
    answer, lane, gateway = _inferred_by(stack, request)
    assert isinstance(answer, oip.ModelInferResponse), answer
    assert _class_index(answer) in CAT_CLASSES
    assert (lane, gateway) == ([], ["OK"])
