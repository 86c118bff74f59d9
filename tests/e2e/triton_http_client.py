"""What a Triton user runs over HTTP, unchanged: ``tritonclient.http`` against Ferry's public port.

Run with the peer environment's Python (``.venv-peer``). Prints one JSON object for the test to read.
Usage: ``python triton_http_client.py HOST:PORT API_KEY MODEL IMAGE PIXELS.npy``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def _error(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except InferenceServerException as err:
        return str(err.message())
    return ""


def _named(name: str, image: str) -> triton.InferInput:
    tensor = triton.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([Path(image).read_bytes()], dtype=np.object_))
    return tensor


def main() -> None:
    target, api_key, model, image, pixels_file = sys.argv[1:]
    # A copy per call: tritonclient.http adds Inference-Header-Content-Length to the dict it is given.
    auth = {"authorization": f"Bearer {api_key}"}
    client = triton.InferenceServerClient(url=target)
    photo = _named("IMAGE", image)  # binary data, tritonclient's default
    binary = client.infer(
        model, [photo], headers=dict(auth), parameters={"top_k": 3}, request_id="triton-http"
    )
    as_json = client.infer(
        model,
        [photo],
        outputs=[
            triton.InferRequestedOutput("LABELS", binary_data=False),
            triton.InferRequestedOutput("SCORES"),
        ],
        headers=dict(auth),
        model_version="1",
    )
    pixels = np.load(pixels_file)
    tensor = triton.InferInput("TENSOR", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=False)  # FP32 as JSON numbers
    typed = client.infer(
        model,
        [tensor],
        outputs=[triton.InferRequestedOutput("CLASS_INDICES", binary_data=False)],
        headers=dict(auth),
    )
    print(
        json.dumps(
            {
                "live": client.is_server_live(headers=dict(auth)),
                "ready": client.is_server_ready(headers=dict(auth)),
                "model_ready": client.is_model_ready(model, headers=dict(auth)),
                "server": client.get_server_metadata(headers=dict(auth)),
                "metadata": client.get_model_metadata(model, headers=dict(auth)),
                "binary_labels": [[x.decode() for x in row] for row in binary.as_numpy("LABELS")],
                "binary_scores": binary.as_numpy("SCORES").tolist(),
                "binary_id": binary.get_response()["id"],
                "binary_outputs": binary.get_response()["outputs"],
                "json_labels": [
                    [x.decode() if isinstance(x, bytes) else x for x in row]
                    for row in as_json.as_numpy("LABELS")
                ],
                "json_outputs": as_json.get_response()["outputs"],
                "tensor_classes": typed.as_numpy("CLASS_INDICES").tolist(),
                "live_without_key": client.is_server_live(),
                "unauthenticated": _error(lambda: client.get_server_metadata()),
                "unknown_model": _error(lambda: client.get_model_metadata("resnet-9000", headers=dict(auth))),
                "unknown_version_ready": client.is_model_ready(model, "7", headers=dict(auth)),
                "bad_input": _error(
                    lambda: client.infer(model, [_named("PIXELS", image)], headers=dict(auth))
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
