"""``ferry up --trace``, ``ferry trace`` and ``ferry metrics`` on a stack of their own."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY, RunningStack

pytestmark = pytest.mark.e2e

API_KEY = "ferry-trace-key-0123456789"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack started with ``ferry up --trace`` (no collector of the user's configured)."""
    env = {
        "FERRY_DEV_API_KEY": API_KEY,
        "FERRY_OTLP_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "FERRY_INFERENCE_MODELS": "efficientnet-lite0",  # the one model these tests call
    }
    running = RunningStack(Path(tmp_path_factory.mktemp("traced")) / "state", env, ["--trace"])
    running.start()
    yield running
    running.stop()


def ferry(running: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the ``ferry`` command against ``running``'s state folder."""
    env = {**os.environ, "FERRY_STATE_DIR": str(running.state_dir)}
    return subprocess.run([FERRY, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_ferry_trace_draws_a_predict_through_envoy_as_one_waterfall(
    traced: RunningStack, cat_jpeg: bytes
) -> None:
    rest = Rest(traced.endpoints["http_url"], API_KEY)
    status, body = rest.post("/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(cat_jpeg)}})
    assert status == 200, body
    trace_id = body["prediction"]["trace_id"]
    wanted = ("ferry-envoy", "ferry-gateway", "ferry-inference")
    deadline = time.monotonic() + 30  # Envoy flushes its spans every few seconds
    while True:
        shown = ferry(traced, "trace", trace_id)
        if (shown.returncode == 0 and all(s in shown.stdout for s in wanted)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}:")
    for service in wanted:
        assert any(line.startswith(service) and "█" in line for line in lines[2:]), shown.stdout
    # Envoy's span is the root: the first row, not indented; the services' spans sit under it.
    assert lines[2].startswith("ferry-envoy")

    listed = ferry(traced, "trace")
    assert listed.returncode == 0 and trace_id in listed.stdout, listed.stdout
    unknown = ferry(traced, "trace", "0" * 32)
    assert unknown.returncode == 1 and "no spans stored for trace" in unknown.stdout


def test_ferry_metrics_prints_each_service_and_up_writes_a_scrape_config(
    traced: RunningStack, cat_jpeg: bytes
) -> None:
    rest = Rest(traced.endpoints["http_url"], API_KEY)
    status, _ = rest.post("/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(cat_jpeg)}})
    assert status == 200
    shown = ferry(traced, "metrics")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines() if line.strip()}
    for service in ("gateway", "inference", "store", "jobs"):
        assert service in rows, shown.stdout
    assert int(rows["gateway"][1]) >= 1  # requests
    assert "inference: batch size mean" in shown.stdout
    assert "store: records:" in shown.stdout

    config = Path(traced.endpoints["prometheus_config"]).read_text()
    for process, ports in traced.endpoints["services"].items():
        # A service's processes (gateway and its upload lane, gateway-uploads) are one job's targets.
        service = process.split("-")[0]
        assert f"job_name: ferry-{service}" in config
        assert f':{ports["metrics_port"]}"' in config


def test_ferry_metrics_says_when_no_stack_runs(tmp_path: Path) -> None:
    env = {**os.environ, "FERRY_STATE_DIR": str(tmp_path)}
    shown = subprocess.run([FERRY, "metrics"], env=env, capture_output=True, text=True, check=False)
    assert shown.returncode == 1
    assert "no Ferry stack is running" in shown.stdout
