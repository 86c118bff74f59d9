"""The Open Inference Protocol on the public port: Triton's own client, and Ferry's stubs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from services.inference.preprocessing import ImageTransform
from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.e2e.rest import Rest, b64

pytestmark = pytest.mark.e2e

PEER_PYTHON = Path(sys.executable).parents[2] / ".venv-peer" / "bin" / "python"
AUTH = (("authorization", f"Bearer {API_KEY}"),)


def test_tritonclient_classifies_real_photos_through_envoy(
    stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes, tmp_path: Path
) -> None:
    assert PEER_PYTHON.exists(), "run `make install`: it makes .venv-peer with tritonclient"
    (tmp_path / "cat.jpg").write_bytes(cat_jpeg)
    (tmp_path / "coffee.jpg").write_bytes(coffee_jpeg)
    script = Path(__file__).with_name("triton_client.py")
    done = subprocess.run(
        [
            str(PEER_PYTHON),
            str(script),
            stack["grpc_target"],
            API_KEY,
            "efficientnet-lite0",
            str(tmp_path / "cat.jpg"),
            str(tmp_path / "coffee.jpg"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["unauthenticated"] == "StatusCode.UNAUTHENTICATED"
    assert seen["live_without_key"] is True and seen["ready_without_key"] is True  # probes carry no key
    assert seen["metadata"]["inputs"] == [
        {"name": "IMAGE", "datatype": "BYTES", "shape": ["-1"]},
        {"name": "TENSOR", "datatype": "FP32", "shape": ["-1", "3", "-1", "-1"]},
    ]
    assert [row[0] for row in seen["labels"]][1] == "espresso"
    assert seen["labels"][0][0] in {"tiger cat", "Egyptian cat", "tabby"}
    assert len(seen["scores"]) == 2 and all(len(row) == 3 for row in seen["scores"])
    assert seen["scores"][0] == sorted(seen["scores"][0], reverse=True)
    assert seen["id"] == "triton-e2e"


def _stub(stack: dict[str, Any]) -> tuple[grpc.Channel, oip_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(stack["grpc_target"])
    return channel, oip_grpc.GRPCInferenceServiceStub(channel)


def test_typed_contents_answer_typed_outputs_and_are_recorded(
    stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    request = oip.ModelInferRequest(
        model_name="efficientnet-lite0",
        inputs=[
            oip.ModelInferRequest.InferInputTensor(
                name="IMAGE",
                datatype="BYTES",
                shape=[2],
                contents=oip.InferTensorContents(bytes_contents=[cat_jpeg, coffee_jpeg]),
            )
        ],
    )
    channel, stub = _stub(stack)
    with channel:
        answer = stub.ModelInfer(request, metadata=AUTH, timeout=60)
    outputs = {o.name: o for o in answer.outputs}
    assert set(outputs) == {"LABELS", "SCORES", "CLASS_INDICES"}
    assert list(outputs["CLASS_INDICES"].shape) == [2, 5]
    indices = list(outputs["CLASS_INDICES"].contents.int64_contents)
    assert indices[0] in CAT_CLASSES and indices[5] == ESPRESSO
    assert not answer.raw_output_contents


@pytest.mark.parametrize(
    ("tensor", "code"),
    [
        (
            oip.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="FP32", shape=[1]),
            "INVALID_ARGUMENT",
        ),
        (
            oip.ModelInferRequest.InferInputTensor(name="PIXELS", datatype="BYTES", shape=[1]),
            "INVALID_ARGUMENT",
        ),
        (
            oip.ModelInferRequest.InferInputTensor(
                name="IMAGE",
                datatype="BYTES",
                shape=[1],
                contents=oip.InferTensorContents(bytes_contents=[b"no"]),
            ),
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_bad_requests_get_a_clear_status(stack: dict[str, Any], tensor: Any, code: str) -> None:
    channel, stub = _stub(stack)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(
            oip.ModelInferRequest(model_name="efficientnet-lite0", inputs=[tensor]), metadata=AUTH, timeout=60
        )
    assert caught.value.code().name == code
    assert "IMAGE" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("request_id", "reason", "words"),
    [
        ("x" * 1_000_000, "REQUEST_ID_TOO_LONG", "id is 1000000 characters; the limit is 128"),
        ("a\x00b", "INVALID_REQUEST_ID", "id holds a NUL character"),
    ],
)
def test_a_request_id_past_predicts_limits_is_refused_not_echoed(
    stack: dict[str, Any], cat_jpeg: bytes, request_id: str, reason: str, words: str
) -> None:
    image = oip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1], contents=oip.InferTensorContents(bytes_contents=[cat_jpeg])
    )
    request = oip.ModelInferRequest(model_name="efficientnet-lite0", id=request_id, inputs=[image])
    channel, stub = _stub(stack)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, metadata=AUTH, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (caught.value.details() or "")
    status = rpc_status.from_call(caught.value)
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    assert info.reason == reason and info.metadata["field"] == "id"


def test_unknown_model_and_version_are_not_found(stack: dict[str, Any]) -> None:
    channel, stub = _stub(stack)
    with channel:
        for request in (
            oip.ModelMetadataRequest(name="resnet-9000"),
            oip.ModelMetadataRequest(name="efficientnet-lite0", version="7"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelMetadata(request, metadata=AUTH, timeout=30)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _triton_tensors(stack: dict[str, Any], *args: str) -> dict[str, Any]:
    assert PEER_PYTHON.exists(), "run `make install`: it makes .venv-peer with tritonclient"
    script = Path(__file__).with_name("triton_tensors.py")
    done = subprocess.run(
        [str(PEER_PYTHON), str(script), stack["grpc_target"], API_KEY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_tritonclient_sends_fp32_tensors_and_reads_raw_outputs(
    stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes, tmp_path: Path
) -> None:
    # The photos as the classifier's own preprocessing leaves them: [2, 3, 224, 224], normalised.
    pixels = np.stack([ImageTransform().decode(photo) for photo in (coffee_jpeg, cat_jpeg)])
    np.save(tmp_path / "pixels.npy", pixels)
    seen = _triton_tensors(stack, "tensor", "efficientnet-lite0", str(tmp_path / "pixels.npy"))
    assert seen["raw"] is True
    assert seen["class_indices"][0][0] == ESPRESSO and seen["class_indices"][1][0] in CAT_CLASSES
    assert seen["scores"][0] == sorted(seen["scores"][0], reverse=True)


def test_typed_fp32_contents_answer_typed_outputs(stack: dict[str, Any], coffee_jpeg: bytes) -> None:
    pixels = ImageTransform().decode(coffee_jpeg)
    request = oip.ModelInferRequest(
        model_name="efficientnet-lite0",
        inputs=[
            oip.ModelInferRequest.InferInputTensor(
                name="TENSOR",
                datatype="FP32",
                shape=[1, *pixels.shape],
                contents=oip.InferTensorContents(fp32_contents=pixels.ravel().tolist()),
            )
        ],
        outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="CLASS_INDICES")],
        parameters={"top_k": oip.InferParameter(int64_param=2)},
    )
    channel, stub = _stub(stack)
    with channel:
        answer = stub.ModelInfer(request, metadata=AUTH, timeout=60)
        with pytest.raises(grpc.RpcError) as caught:  # a tensor of another shape: the model says which
            request.inputs[0].shape[:] = [1, 3, 112, 448]
            stub.ModelInfer(request, metadata=AUTH, timeout=60)
    [output] = answer.outputs
    assert (output.name, list(output.shape)) == ("CLASS_INDICES", [1, 2])
    assert output.contents.int64_contents[0] == ESPRESSO and not answer.raw_output_contents
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TENSOR[0]" in (caught.value.details() or "") and "224" in (caught.value.details() or "")


def test_tritonclient_sends_a_sentence_to_the_text_model(rest: Rest, stack: dict[str, Any]) -> None:
    status, body = rest.get("/v1/models")
    assert status == 200, body
    if "models/minilm" not in [m["name"] for m in body["models"]]:
        pytest.skip("this e2e stack does not load minilm (FERRY_INFERENCE_MODELS)")
    seen = _triton_tensors(stack, "text", "minilm", "a cat sleeping on a sofa")
    assert len(seen["embedding"][0]) == 384
    assert sum(x * x for x in seen["embedding"][0]) == pytest.approx(1.0, abs=1e-3)
    labels = ["quarterly tax filing", "a kitten napping on a couch"]
    zero_shot = _triton_tensors(stack, "text", "minilm", "a cat sleeping on a sofa", *labels)
    assert zero_shot["labels"][0] == "a kitten napping on a couch"


def test_a_json_object_goes_to_the_notebook_model(stack: dict[str, Any], coffee_jpeg: bytes) -> None:
    payload = json.dumps({"image": b64(coffee_jpeg)}).encode()
    request = oip.ModelInferRequest(
        model_name="agree",
        inputs=[
            oip.ModelInferRequest.InferInputTensor(
                name="JSON",
                datatype="BYTES",
                shape=[1],
                contents=oip.InferTensorContents(bytes_contents=[payload]),
            )
        ],
    )
    channel, stub = _stub(stack)
    with channel:
        answer = stub.ModelInfer(request, metadata=AUTH, timeout=120)
    [output] = answer.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("OUTPUT", "BYTES", [1])
    agreed = json.loads(output.contents.bytes_contents[0])
    assert agreed["agreed"] is True and agreed["label"] == "espresso"
