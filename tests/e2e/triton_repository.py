"""Triton's model control, unchanged: tritonclient's gRPC and HTTP repository calls against Ferry.

Run with the peer environment's Python (``.venv-peer``). Unloads and loads MODEL once with each
client, listing the index between; prints one JSON object for the test to read.
Usage: ``python triton_repository.py HOST:PORT API_KEY MODEL``
"""

from __future__ import annotations

import json
import sys
from typing import Any

import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException


def _state(index: list[dict[str, Any]], model: str) -> list[str]:
    return [f"{m['state']}:{m.get('reason', '')}" for m in index if m["name"] == model]


def main() -> None:
    target, api_key, model = sys.argv[1:]
    auth = {"authorization": f"Bearer {api_key}"}
    seen: dict[str, Any] = {}
    grpc_client = triton_grpc.InferenceServerClient(url=target)
    grpc_client.unload_model(model, headers=dict(auth))
    index = grpc_client.get_model_repository_index(headers=dict(auth), as_json=True)["models"]
    seen["grpc_after_unload"] = _state(index, model)
    seen["grpc_ready_after_unload"] = grpc_client.is_model_ready(model, headers=dict(auth))
    grpc_client.load_model(model, headers=dict(auth))
    seen["grpc_ready_after_load"] = grpc_client.is_model_ready(model, headers=dict(auth))
    try:
        grpc_client.load_model("resnet-9000", headers=dict(auth))
        seen["grpc_unknown"] = ""
    except InferenceServerException as err:
        seen["grpc_unknown"] = f"{err.status()} {err.message()}"

    http_client = triton_http.InferenceServerClient(url=target)
    http_client.unload_model(model, headers=dict(auth))
    seen["http_after_unload"] = _state(http_client.get_model_repository_index(headers=dict(auth)), model)
    seen["http_ready_after_unload"] = http_client.is_model_ready(model, headers=dict(auth))
    http_client.load_model(model, headers=dict(auth))
    seen["http_after_load"] = _state(http_client.get_model_repository_index(headers=dict(auth)), model)
    seen["http_models"] = sorted(
        m["name"] for m in http_client.get_model_repository_index(headers=dict(auth))
    )
    try:
        http_client.unload_model(model)  # no key
        seen["http_no_key"] = ""
    except InferenceServerException as err:
        seen["http_no_key"] = str(err.message())
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
