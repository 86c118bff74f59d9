"""What a Triton user runs, unchanged: ``tritonclient.grpc`` against Ferry's public port.

Run with the peer environment's Python (``.venv-peer``, made by ``make install``), because
tritonclient pins protobuf below Ferry's version. Prints one JSON object for the test to read.
Usage: ``python triton_client.py HOST:PORT API_KEY MODEL IMAGE...``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def main() -> None:
    target, api_key, model, *images = sys.argv[1:]
    headers = {"authorization": f"Bearer {api_key}"}
    client = triton.InferenceServerClient(url=target)
    photos = np.array([Path(p).read_bytes() for p in images], dtype=np.object_)
    tensor = triton.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(photos)
    result = client.infer(
        model,
        [tensor],
        outputs=[triton.InferRequestedOutput("LABELS"), triton.InferRequestedOutput("SCORES")],
        headers=headers,
        parameters={"top_k": 3},
        request_id="triton-e2e",
    )
    live_without_key = client.is_server_live()  # health is open to probes, like Triton's
    try:
        client.get_server_metadata()  # no key: refused like any other call
        unauthenticated = ""
    except InferenceServerException as err:
        unauthenticated = str(err.status())
    metadata = client.get_model_metadata(model, headers=headers, as_json=True)
    print(
        json.dumps(
            {
                "live": client.is_server_live(headers=headers),
                "ready": client.is_server_ready(headers=headers),
                "model_ready": client.is_model_ready(model, headers=headers),
                "metadata": metadata,
                "labels": [[x.decode() for x in row] for row in result.as_numpy("LABELS")],
                "scores": result.as_numpy("SCORES").tolist(),
                "id": result.get_response().id,
                "unauthenticated": unauthenticated,
                "live_without_key": live_without_key,
                "ready_without_key": client.is_server_ready(),
            }
        )
    )


if __name__ == "__main__":
    main()
