"""Services log JSON lines; the gateway logs one access line per call, under the call's trace id."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.rest import Rest, b64

pytestmark = pytest.mark.e2e


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_a_rest_call_leaves_one_access_line_with_its_trace_id(
    stack: dict[str, Any], rest: Rest, coffee_jpeg: bytes
) -> None:
    status, body = rest.post(
        "/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(coffee_jpeg)}}
    )
    assert status == 200, body
    trace_id = body["prediction"]["trace_id"]
    log = Path(stack["logs_dir"]) / "gateway.log"
    deadline = time.monotonic() + 10
    while True:
        access = [
            e for e in json_lines(log) if e["logger"] == "ferry.access" and e.get("trace_id") == trace_id
        ]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [line] = access
    assert line["method"] == "/ferry.models.v1.ModelService/Predict"
    assert line["code"] == "OK"
    assert line["service"] == "ferry-gateway"
    assert 0 < line["duration_ms"] < 60_000
    assert line["request_id"]  # Envoy's x-request-id

    # Envoy logs the same request, in the same shape, under the same trace and request ids. It
    # flushes its access log every few seconds, so the line may take a moment to appear.
    envoy_log = Path(stack["logs_dir"]) / "envoy.log"
    deadline = time.monotonic() + 20
    while True:
        envoy = [e for e in json_lines(envoy_log) if e.get("trace_id") == trace_id]
        if envoy or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(e["logger"], e["code"], e["request_id"]) for e in envoy] == [
        ("envoy.access", 200, line["request_id"])
    ]
    assert envoy[0]["path"] == "/v1/models/efficientnet-lite0:predict"
    assert envoy[0]["method"] == "POST"


def test_envoy_logs_a_rest_get_as_the_get_it_was(stack: dict[str, Any], rest: Rest) -> None:
    # The transcoder sends every REST call on as a POST to the gRPC path; the log keeps the client's.
    marker = "efficientnet-lite0?view=logged-get"
    status, body = rest.get(f"/v1/models/{marker}")
    assert status in (200, 400), body
    envoy_log = Path(stack["logs_dir"]) / "envoy.log"
    deadline = time.monotonic() + 20
    while True:
        envoy = [e for e in json_lines(envoy_log) if e.get("path") == f"/v1/models/{marker}"]
        if envoy or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(e["method"], e["message"].split()[0]) for e in envoy] == [("GET", "GET")], envoy


def test_every_service_logs_json_lines(stack: dict[str, Any]) -> None:
    for service in ("gateway", "inference", "jobs", "store"):
        lines = json_lines(Path(stack["logs_dir"]) / f"{service}.log")
        assert lines, f"{service} wrote no JSON log lines"
        assert {entry["service"] for entry in lines} == {f"ferry-{service}"}
        assert any(entry["message"].startswith("started:") for entry in lines)
