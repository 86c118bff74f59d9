"""One trace follows a job through every hop: Envoy -> gateway -> NATS -> jobs -> inference -> store."""

from __future__ import annotations

import secrets
import time

import pytest

from tests.e2e.otlp import OtlpCollector
from tests.e2e.rest import Rest, b64
from tests.e2e.test_jobs import wait_finished

pytestmark = pytest.mark.e2e

SERVICES = {"ferry-envoy", "ferry-gateway", "ferry-jobs", "ferry-inference", "ferry-store"}


def test_a_job_is_one_trace_across_every_service(
    rest: Rest, otlp_collector: OtlpCollector, cat_jpeg: bytes
) -> None:
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    body = {"model": "efficientnet-lite0", "inputs": [{"image": {"content": b64(cat_jpeg)}}]}
    status, answer = rest.post("/v1/jobs", body, headers={"traceparent": traceparent})
    assert status == 200, answer
    job = wait_finished(rest, answer["job"]["name"])
    assert job["trace_id"] == trace_id

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = {span.service for span in otlp_collector.spans_of_trace(trace_id)}
        if SERVICES <= seen:
            break
        time.sleep(0.25)
    assert seen >= SERVICES, f"services seen in trace {trace_id}: {sorted(seen)}"
    # The stored record carries the same trace id.
    status, listing = rest.get(f"/v1/predictions?job={job['name']}")
    assert status == 200
    assert listing["predictions"][0]["trace_id"] == trace_id
