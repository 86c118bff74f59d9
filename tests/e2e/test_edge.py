"""The edge as an attacker and a careless client meet it: body limits that protect Envoy's memory,
and Envoy's own errors in the gateway's JSON shape (devstack/edge.py)."""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common import limits
from tests.e2e.rest import Rest, b64
from tools import openapi

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
PREDICT = "/v1/models/efficientnet-lite0:predict"
INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED = 3, 5, 4
#: Test cases per operation of the fuzz run: about a minute on two cores.
FUZZ_EXAMPLES = 10


def rss_kib(pid: int) -> int:
    """The process's resident memory now (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def stream_body(url: str, path: str, size: int, answers: list[bytes], sent: list[int]) -> None:
    """POSTs ``size`` bytes of JSON without a key, as a client would stream an upload, reading the
    answer as soon as one comes (as curl does); records the answer and how much was sent."""
    address = urlsplit(url)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {address.netloc}\r\ncontent-type: application/json\r\n"
        f"content-length: {size}\r\n\r\n"
    ).encode()
    chunk = b'{"image":{"content":"' + b"A" * (MIB - 22)
    total = 0
    answer = b""
    with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
        sock.sendall(head)
        while total < size:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            if writable:
                try:
                    total += sock.send(chunk if total == 0 else b"A" * MIB)
                except OSError:
                    break
        try:
            sock.settimeout(30)
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except OSError:
            pass
    answers.append(answer)
    sent.append(total)


def test_three_unauthenticated_256_mib_uploads_get_413_and_envoy_stays_small(stack: dict[str, Any]) -> None:
    envoy = stack["pids"]["envoy"]
    before = rss_kib(envoy)
    answers: list[bytes] = []
    sent: list[int] = []
    senders = [
        threading.Thread(target=stream_body, args=(stack["http_url"], PREDICT, 256 * MIB, answers, sent))
        for _ in range(3)
    ]
    peak = before
    for sender in senders:
        sender.start()
    while any(sender.is_alive() for sender in senders):
        peak = max(peak, rss_kib(envoy))
        time.sleep(0.02)
    for sender in senders:
        sender.join()
    growth_mib = (peak - before) / 1024
    print(
        f"\nEnvoy VmRSS {before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB while 3 x 256 MiB "
        f"arrived (+{growth_mib:.0f} MiB); sent before the 413: {[s // MIB for s in sent]} MiB"
    )
    # Each body is cut off at the predict limit (16 MiB), not read to its end.
    assert all(s < 256 * MIB for s in sent), sent
    assert growth_mib < 3 * limits.PREDICT_REQUEST_BYTES / MIB + 64, growth_mib
    statuses = [a.split(b"\r\n", 1)[0] for a in answers if a]
    assert statuses and all(b" 413 " in s for s in statuses), answers
    assert b"REQUEST_TOO_LARGE" in answers[0] and b"16 MiB" in answers[0], answers[0]


def test_oversized_rest_predict_is_413_with_the_limit_and_no_429(rest: Rest) -> None:
    status, body = rest.post(PREDICT, {"image": {"content": b64(b"\xff" * (13 * MIB))}})
    assert status == 413, body
    assert body["code"] == INVALID_ARGUMENT
    assert "16 MiB (16777216 bytes)" in body["message"], body
    [info] = body["details"]
    assert info["reason"] == "REQUEST_TOO_LARGE" and info["domain"] == "ferry.dev"
    assert info["metadata"]["max_bytes"] == str(limits.PREDICT_REQUEST_BYTES)


def test_small_calls_have_a_small_limit(rest: Rest) -> None:
    status, body = rest.post("/v1/jobs/0193a000-0000-7000-8000-000000000000:cancel", {"pad": "x" * (2 * MIB)})
    assert status == 413, body
    assert "1 MiB" in body["message"] and body["code"] == INVALID_ARGUMENT


def test_oversized_grpc_predict_is_invalid_argument_with_the_limit(stack: dict[str, Any]) -> None:
    request = model_service_pb2.PredictRequest(
        model="models/efficientnet-lite0", image=types_pb2.Image(content=b"\xff" * (20 * MIB))
    )
    with grpc.insecure_channel(stack["grpc_target"]) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            model_service_pb2_grpc.ModelServiceStub(channel).Predict(request, timeout=60)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error  # never RESOURCE_EXHAUSTED
    assert "16 MiB (16777216 bytes)" in (error.details() or "")
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "REQUEST_TOO_LARGE"


def expect_gateway_shape(body: dict[str, Any], code: int, reason: str) -> None:
    """The JSON the gateway's errors have: code, message, and an ErrorInfo in details."""
    assert set(body) == {"code", "message", "details"}, body
    assert body["code"] == code and body["message"], body
    [info] = body["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo", body
    assert info["domain"] == "ferry.dev" and info["reason"] == reason, body


def test_json_the_transcoder_cannot_read_is_400_in_the_gateway_shape(rest: Rest) -> None:
    status, body = rest.post(PREDICT, {"image": {"content": "not base64!"}})
    assert status == 400
    expect_gateway_shape(body, INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert "image.content" in body["message"]


def test_broken_json_is_400_in_the_gateway_shape(stack: dict[str, Any]) -> None:
    request = urllib.request.Request(stack["http_url"] + PREDICT, data=b'{"image": ', method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    assert caught.value.headers["content-type"] == "application/json"
    expect_gateway_shape(json.loads(caught.value.read()), INVALID_ARGUMENT, "MALFORMED_REQUEST")


def test_unknown_path_is_404_in_the_gateway_shape(rest: Rest) -> None:
    status, body = rest.get("/v1/no-such-collection")
    assert status == 404
    expect_gateway_shape(body, NOT_FOUND, "UNKNOWN_PATH")


def test_envoy_and_gateway_404s_look_alike(rest: Rest, cat_jpeg: bytes) -> None:
    _, from_envoy = rest.get("/v1/no-such-collection")
    status, from_gateway = rest.post(
        "/v1/models/no-such-model:predict", {"image": {"content": b64(cat_jpeg)}}
    )
    assert status == 404
    assert set(from_envoy) == set(from_gateway)
    assert set(from_envoy["details"][0]) == set(from_gateway["details"][0])


def test_expired_deadline_is_504_in_the_gateway_shape(rest: Rest, cat_jpeg: bytes) -> None:
    status, body = rest.post(PREDICT, {"image": {"content": b64(cat_jpeg)}}, headers={"grpc-timeout": "1m"})
    assert status == 504, body
    # Envoy's timer or the gateway's gRPC deadline, whichever fires first: the same shape either way
    # (gRPC's own deadline status carries no ErrorInfo; Envoy's carries EDGE_DEADLINE_EXCEEDED).
    assert set(body) == {"code", "message", "details"} and body["code"] == DEADLINE_EXCEEDED, body
    assert all(d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo" for d in body["details"]), body


def test_validation_errors_carry_field_violations(rest: Rest, cat_jpeg: bytes) -> None:
    status, body = rest.post(PREDICT, {"image": {"content": b64(cat_jpeg)}, "top_k": 5000})
    assert status == 400, body
    assert body["details"][0]["reason"] == "INVALID_TOP_K"
    [bad_request] = [d for d in body["details"] if d["@type"] == "type.googleapis.com/google.rpc.BadRequest"]
    [violation] = bad_request["field_violations"]
    assert violation["field"] == "top_k" and violation["reason"] == "INVALID_TOP_K", violation


def test_unknown_json_field_is_400_naming_the_field(rest: Rest, cat_jpeg: bytes) -> None:
    status, body = rest.post(PREDICT, {"image": {"content": b64(cat_jpeg)}, "topk": 3})
    assert status == 400, body
    expect_gateway_shape(body, INVALID_ARGUMENT, "UNKNOWN_FIELD")
    assert '"topk"' in body["message"] and "top_k" in body["message"], body
    assert body["details"][0]["metadata"]["field"] == "topk"


def test_unknown_nested_field_in_a_job_is_named_by_its_path(rest: Rest, cat_jpeg: bytes) -> None:
    job = {"model": "efficientnet-lite0", "inputs": [{"image": {"content": b64(cat_jpeg), "url": "x"}}]}
    status, body = rest.post("/v1/jobs", job)
    assert status == 400, body
    assert body["details"][0]["metadata"]["field"] == "inputs.image.url", body


@pytest.mark.parametrize("top_k", ["top_k", "topK"])
def test_fields_by_proto_or_json_name_pass(rest: Rest, cat_jpeg: bytes, top_k: str) -> None:
    status, body = rest.post(PREDICT, {"image": {"content": b64(cat_jpeg)}, top_k: 3})
    assert status == 200, body
    assert len(body["prediction"]["classes"]) == 3


def test_openapi_description_is_served_at_openapi_json(stack: dict[str, Any]) -> None:
    with urllib.request.urlopen(stack["http_url"] + "/openapi.json", timeout=30) as answer:
        assert answer.headers["content-type"] == "application/json"
        served = answer.read()
    assert served == openapi.OPENAPI_FILE.read_bytes()
    assert "/v1/models/{model}:predict" in json.loads(served)["paths"]


def fuzz_key(rest: Rest) -> str:
    """A key of its own tenant, so the fuzz run's jobs and predictions stay out of other tests' lists."""
    status, body = rest.post(
        "/v1/keys",
        {"tenant": "fuzz", "scopes": ["predict", "jobs", "read"], "rate_per_s": 10000, "burst": 10000},
    )
    assert status == 200, body
    return str(body["api_key"])


def test_schemathesis_finds_no_server_error_through_envoy(
    stack: dict[str, Any], rest: Rest, tmp_path: Path
) -> None:
    """Property-based requests from the served description, valid and invalid, against the real REST
    API through Envoy: none may answer 5xx, crash a process or hang (every request has a timeout)."""
    report = tmp_path / "schemathesis.json"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        stack["http_url"] + "/openapi.json",
        "--url",
        stack["http_url"],
        "--header",
        f"authorization: Bearer {fuzz_key(rest)}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--exclude-path-regex",
        ":watch$",  # a stream lasts as long as its job
        "--request-timeout",
        "30",
        "--workers",
        "2",
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
    ]
    # In tmp_path: schemathesis keeps a cache (.schemathesis/) in its working folder.
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    generated = re.search(r"Test cases:\s+(\d+) generated", done.stdout)
    print(f"\nschemathesis: {generated[1] if generated else '?'} test cases (requests) generated")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert list(stack["pids"]) and all(Path(f"/proc/{pid}").exists() for pid in stack["pids"].values())


def test_image_urls_to_private_addresses_are_refused(rest: Rest) -> None:
    for uri in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/cat.jpg",
        "http://localhost/x",
    ):
        status, body = rest.post(PREDICT, {"image": {"uri": uri}})
        assert status == 400, body
        assert body["details"][0]["reason"] == "IMAGE_URI_FORBIDDEN", body
    status, body = rest.post(
        "/v1/jobs", {"model": "efficientnet-lite0", "inputs": [{"image": {"uri": "file:///etc/passwd"}}]}
    )
    assert status == 400 and body["details"][0]["reason"] == "INVALID_IMAGE_URI", body
