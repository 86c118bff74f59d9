"""Models at runtime: unload and load through Ferry's API, the CLI and Triton's repository calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
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
    # The README's command, as is: the ensemble and the notebook model that call mobilenet-v2 stay
    # loaded, NOT READY with a reason naming it, and their calls answer MODEL_NOT_LOADED naming it.
    before = _rss_mib(pid)
    done = _ferry(stack, "models", "unload", "mobilenet-v2")
    assert done.returncode == 0, done.stderr
    after = _rss_mib(pid)
    print(f"\ninference RSS: {before:.1f} MiB before unloading mobilenet-v2, {after:.1f} MiB after")
    assert _state(rest, "mobilenet-v2") == "MODEL_STATE_UNLOADED"
    status, body = _predict(rest, "mobilenet-v2", coffee_jpeg)
    assert status == 400 and body["details"][0]["reason"] == "MODEL_NOT_LOADED", body
    assert "ferry models load mobilenet-v2" in body["message"]
    for user in ("imagenet-ensemble", "agree"):
        status, body = rest.get(f"/v1/models/{user}")
        model = body["model"]
        assert model["state"] == "MODEL_STATE_UNAVAILABLE" and not model["ready"], model
        assert "mobilenet-v2" in model["state_message"], model
    status, body = _predict(rest, "imagenet-ensemble", coffee_jpeg)
    assert status == 400 and body["details"][0]["reason"] == "MODEL_NOT_LOADED", body
    assert "'imagenet-ensemble' calls 'mobilenet-v2'" in body["message"], body
    status, body = _predict(rest, "efficientnet-lite0", coffee_jpeg)  # the others still serve
    assert status == 200 and body["prediction"]["classes"][0]["index"] == ESPRESSO, body

    started = time.perf_counter()
    done = _ferry(stack, "models", "load", "mobilenet-v2")
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    print(f"loading mobilenet-v2 took {took:.1f} s; RSS then {_rss_mib(pid):.1f} MiB")
    status, body = _predict(rest, "mobilenet-v2", coffee_jpeg)
    assert status == 200 and body["prediction"]["classes"][0]["index"] == ESPRESSO, body
    # The ensemble serves again by itself: it looks its members up at each call.
    assert _state(rest, "imagenet-ensemble") == "MODEL_STATE_READY"
    status, body = _predict(rest, "imagenet-ensemble", coffee_jpeg)
    assert status == 200 and body["prediction"]["classes"][0]["index"] == ESPRESSO, body


def _call_without_version(rest: Rest, photo: bytes) -> tuple[bool, str, str]:
    """One REST predict of mobilenet-v2 naming no version: (ok, version that answered, record name)."""
    try:
        status, body = _predict(rest, "mobilenet-v2", photo)
    except OSError as err:  # a connection refused or reset is a failed call too
        return False, repr(err), ""
    if status != 200:
        return False, f"{status} {body}", ""
    return True, body["prediction"]["model_version"], body["prediction"]["name"]


def test_two_versions_answer_side_by_side_and_the_default_moves_under_load_with_no_failed_call(
    stack: dict[str, Any], rest: Rest, coffee_jpeg: bytes
) -> None:
    done = _ferry(stack, "models", "load", "mobilenet-v2:2")
    assert done.returncode == 0, done.stderr
    status, body = rest.get("/v1/models/mobilenet-v2")
    model = body["model"]
    assert model["default_version"] == "1", model
    assert {v["version"]: v["state"] for v in model["versions"]} == {
        "1": "MODEL_STATE_READY",
        "2": "MODEL_STATE_READY",
    }, model
    # Two real versions: the same weights, other preprocessing (models.toml), other answers.
    answers = {}
    for version in ("1", "2"):
        status, body = rest.post(
            "/v1/models/mobilenet-v2:predict",
            {"image": {"content": b64(coffee_jpeg)}, "top_k": 1, "version": version},
        )
        assert status == 200 and body["prediction"]["model_version"] == version, body
        answers[version] = body["prediction"]["classes"][0]
    assert answers["1"]["index"] == answers["2"]["index"] == ESPRESSO
    assert answers["1"]["score"] != answers["2"]["score"], answers
    status, body = rest.post(
        "/v1/models/mobilenet-v2:predict", {"image": {"content": b64(coffee_jpeg)}, "version": "7"}
    )
    assert status == 404 and body["details"][0]["reason"] == "MODEL_VERSION_NOT_FOUND", body
    # The Open Inference Protocol routes by version too (REST; gRPC ModelInfer's model_version alike).
    image = {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"}}
    infer = {"inputs": [{**image, "data": [b64(coffee_jpeg)]}], "parameters": {"top_k": 1}}
    status, body = rest.post("/v2/models/mobilenet-v2/versions/2/infer", infer)
    assert status == 200 and body["model_version"] == "2", body
    scores = {o["name"]: o["data"] for o in body["outputs"]}["SCORES"]
    assert abs(scores[0] - answers["2"]["score"]) < 1e-4, (scores, answers)

    # Four clients call without a version, back to back, while the default moves from 1 to 2.
    outcomes: list[tuple[float, float, bool, str, str]] = []  # started, ended, ok, version, record
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            ok, version, name = _call_without_version(rest, coffee_jpeg)
            outcomes.append((started, time.monotonic(), ok, version, name))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    switched = time.monotonic()
    done = _ferry(stack, "models", "default", "mobilenet-v2", "2")
    answered = time.monotonic()
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    failed = [o for o in outcomes if not o[2]]
    before = [o[3] for o in outcomes if o[1] < switched]  # ended before the admin asked
    after = [o[3] for o in outcomes if o[0] > answered]  # started once the switch was answered
    print(
        f"\ndefault 1 -> 2 under 4 clients: {len(outcomes)} calls, {len(failed)} failed; "
        f"before: {before.count('1')} v1 / {before.count('2')} v2; after: {after.count('1')} v1 / "
        f"{after.count('2')} v2; /proc/loadavg {Path('/proc/loadavg').read_text().strip()}"
    )
    assert done.returncode == 0, done.stderr
    assert failed == [], failed[:3]
    assert before and set(before) == {"1"} and after and set(after) == {"2"}
    assert _ferry(stack, "models").returncode == 0

    # Version 1 still answers when named; the records keep the version that answered.
    status, body = rest.post(
        "/v1/models/mobilenet-v2:predict", {"image": {"content": b64(coffee_jpeg)}, "version": "1"}
    )
    assert status == 200 and body["prediction"]["model_version"] == "1", body
    named_v1 = body["prediction"]["name"]
    last_v2 = next(o[4] for o in reversed(outcomes) if o[3] == "2")
    for name, version in ((named_v1, "1"), (last_v2, "2")):
        status, record = rest.poll(f"/v1/{name}", lambda code, _: code == 200)
        assert status == 200 and record["prediction"]["model_version"] == version, record
    status, body = rest.get("/v1/models/mobilenet-v2")
    assert body["model"]["default_version"] == "2" and body["model"]["version"] == "2", body


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


def test_an_unloaded_model_and_a_moved_default_stay_so_across_an_inference_restart(
    stack: dict[str, Any], rest: Rest
) -> None:
    status, body = rest.post("/v1/models/minilm:unload", {})
    assert status == 200, body
    for call in (("load", "mobilenet-v2:2"), ("default", "mobilenet-v2", "2")):
        done = _ferry(stack, "models", *call)
        assert done.returncode == 0, done.stderr
    env = {**os.environ, "FERRY_STATE_DIR": str(Path(stack["logs_dir"]).parent)}
    done = subprocess.run(
        [FERRY, "restart", "inference"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    # The new process read the desired state from NATS: minilm is not loaded, mobilenet-v2's
    # default is still 2, the others serve.
    status, body = rest.poll(
        "/v1/models/efficientnet-lite0", lambda code, b: code == 200 and b["model"]["ready"]
    )
    assert status == 200 and body["model"]["ready"], body
    assert _state(rest, "minilm") == "MODEL_STATE_UNLOADED"
    status, body = rest.get("/v1/models/mobilenet-v2")
    assert body["model"]["default_version"] == "2" and body["model"]["ready"], body
    status, body = rest.post("/v1/models/minilm:load", {})
    assert status == 200 and body["model"]["ready"] is True, body
    done = _ferry(stack, "models", "default", "mobilenet-v2", "1")
    assert done.returncode == 0, done.stderr
