"""Models at runtime: unload and load through Ferry's API, the CLI and Triton's repository calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import ESPRESSO
from tests.e2e.rest import Rest, b64
from tests.e2e.test_open_inference import PEER_PYTHON

pytestmark = pytest.mark.e2e

FERRY = str(Path(sys.executable).parent / "ferry")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _ferry(stack: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FERRY_TARGET": stack["grpc_target"], "FERRY_API_KEY": API_KEY}
    return subprocess.run([FERRY, *args], env=env, capture_output=True, text=True, timeout=600, check=False)


def _predict(rest: Rest, model: str, photo: bytes) -> tuple[int, dict[str, Any]]:
    return rest.post(f"/v1/models/{model}:predict", {"image": {"content": b64(photo)}, "top_k": 1})


def _state(rest: Rest, model: str) -> str:
    status, body = rest.get(f"/v1/models/{model}")
    assert status == 200, body
    return str(body["model"]["state"])


def test_unload_frees_memory_and_load_brings_the_model_back(
    stack: dict[str, Any], rest: Rest, coffee_jpeg: bytes
) -> None:
    pid = stack["pids"]["inference"]
    # mobilenet-v2 is called by the loaded ensemble and the notebook model: refused, saying which.
    status, body = rest.post("/v1/models/mobilenet-v2:unload", {})
    assert status == 400 and body["details"][0]["reason"] == "MODEL_IN_USE", body
    assert "imagenet-ensemble" in body["message"] and "agree" in body["message"]
    for user in ("imagenet-ensemble", "agree"):
        status, body = rest.post(f"/v1/models/{user}:unload", {})
        assert status == 200 and body["model"]["state"] == "MODEL_STATE_UNLOADED", body

    before = _rss_mib(pid)
    done = _ferry(stack, "models", "unload", "mobilenet-v2")
    assert done.returncode == 0, done.stderr
    after = _rss_mib(pid)
    print(f"\ninference RSS: {before:.1f} MiB before unloading mobilenet-v2, {after:.1f} MiB after")
    assert _state(rest, "mobilenet-v2") == "MODEL_STATE_UNLOADED"
    status, body = _predict(rest, "mobilenet-v2", coffee_jpeg)
    assert status == 400 and body["details"][0]["reason"] == "MODEL_NOT_LOADED", body
    assert "ferry models load mobilenet-v2" in body["message"]
    status, body = _predict(rest, "efficientnet-lite0", coffee_jpeg)  # the others still serve
    assert status == 200 and body["prediction"]["classes"][0]["index"] == ESPRESSO, body

    started = time.perf_counter()
    done = _ferry(stack, "models", "load", "mobilenet-v2")
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    print(f"loading mobilenet-v2 took {took:.1f} s; RSS then {_rss_mib(pid):.1f} MiB")
    status, body = _predict(rest, "mobilenet-v2", coffee_jpeg)
    assert status == 200 and body["prediction"]["classes"][0]["index"] == ESPRESSO, body
    for user in ("imagenet-ensemble", "agree"):
        status, body = rest.post(f"/v1/models/{user}:load", {})
        assert status == 200 and body["model"]["state"] == "MODEL_STATE_READY", body
    status, body = _predict(rest, "imagenet-ensemble", coffee_jpeg)
    assert status == 200 and body["prediction"]["classes"][0]["index"] == ESPRESSO, body


def test_minilm_unload_gives_memory_back(stack: dict[str, Any], rest: Rest) -> None:
    pid = stack["pids"]["inference"]
    before = _rss_mib(pid)
    status, body = rest.post("/v1/models/minilm:unload", {})
    assert status == 200, body
    after = _rss_mib(pid)
    print(f"\ninference RSS: {before:.1f} MiB before unloading minilm, {after:.1f} MiB after")
    assert after < before
    started = time.perf_counter()
    status, body = rest.post("/v1/models/minilm:load", {})
    print(f"loading minilm took {time.perf_counter() - started:.1f} s")
    assert status == 200 and body["model"]["ready"] is True, body


def test_admin_calls_need_the_admin_scope_and_known_models(stack: dict[str, Any], rest: Rest) -> None:
    status, body = rest.post("/v1/models/resnet-9000:load", {})
    assert status == 404 and body["details"][0]["reason"] == "MODEL_NOT_FOUND", body
    status, body = rest.post("/v1/keys", {"tenant": "default", "scopes": ["predict"]})
    assert status == 200, body
    predict_only = Rest(rest.base_url, body["api_key"])
    status, body = predict_only.post("/v1/models/efficientnet-lite0:unload", {})
    assert status == 403 and body["details"][0]["reason"] == "MISSING_SCOPE", body


def test_tritonclient_grpc_and_http_unload_and_load_through_the_repository(stack: dict[str, Any]) -> None:
    assert PEER_PYTHON.exists(), "run `make install`: it makes .venv-peer with tritonclient"
    script = Path(__file__).with_name("triton_repository.py")
    done = subprocess.run(
        [str(PEER_PYTHON), str(script), stack["grpc_target"], API_KEY, "minilm"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["grpc_after_unload"] == ["UNAVAILABLE:unloaded by an admin; load it again to serve it"]
    assert (seen["grpc_ready_after_unload"], seen["grpc_ready_after_load"]) == (False, True)
    assert "StatusCode.NOT_FOUND" in seen["grpc_unknown"] and "resnet-9000" in seen["grpc_unknown"]
    assert seen["http_after_unload"][0].startswith("UNAVAILABLE:unloaded")
    assert seen["http_ready_after_unload"] is False and seen["http_after_load"] == ["READY:"]
    assert {"efficientnet-lite0", "mobilenet-v2", "minilm"} <= set(seen["http_models"])
    assert "API key" in seen["http_no_key"]


def test_an_unloaded_model_stays_unloaded_across_an_inference_restart(
    stack: dict[str, Any], rest: Rest
) -> None:
    status, body = rest.post("/v1/models/minilm:unload", {})
    assert status == 200, body
    env = {**os.environ, "FERRY_STATE_DIR": str(Path(stack["logs_dir"]).parent)}
    done = subprocess.run(
        [FERRY, "restart", "inference"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    # The new process read the desired state from NATS: minilm is not loaded, the others serve.
    status, body = rest.poll(
        "/v1/models/efficientnet-lite0", lambda code, b: code == 200 and b["model"]["ready"]
    )
    assert status == 200 and body["model"]["ready"], body
    assert _state(rest, "minilm") == "MODEL_STATE_UNLOADED"
    status, body = rest.post("/v1/models/minilm:load", {})
    assert status == 200 and body["model"]["ready"] is True, body
