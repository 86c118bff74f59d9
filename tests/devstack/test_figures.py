"""``ferry metrics``'s arithmetic and table, on real exposition text from prometheus_client."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from devstack.figures import Samples, format_figures, quantile


def _scrape() -> Samples:
    registry = CollectorRegistry()
    requests = Counter("ferry_grpc_requests_total", "", ["service", "method", "code"], registry=registry)
    latency = Histogram(
        "ferry_grpc_request_seconds", "", ["service", "method"], buckets=(0.01, 0.1, 1), registry=registry
    )
    requests.labels("gateway", "/P/Predict", "OK").inc(8)
    requests.labels("gateway", "/P/Predict", "INVALID_ARGUMENT").inc(2)
    for seconds in (0.005,) * 5 + (0.05,) * 4 + (0.5,):
        latency.labels("gateway", "/P/Predict").observe(seconds)
    records = Counter("ferry_store_records_total", "", ["outcome"], registry=registry)
    records.labels("inserted").inc(7)
    return Samples.parse(generate_latest(registry).decode())


def test_quantile_interpolates_within_a_bucket_as_promql_does() -> None:
    buckets = [(0.01, 5.0), (0.1, 9.0), (1.0, 10.0), (float("inf"), 10.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * (7 - 5) / 4)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 0.9)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 5.0)]) == 0.1  # beyond the last bound


def test_the_table_counts_requests_and_errors_and_shows_what_each_service_has() -> None:
    text = format_figures({"gateway": _scrape(), "jobs": "connection refused"})
    header, gateway, jobs = text.splitlines()[:3]
    assert header.split() == ["SERVICE", "REQUESTS", "ERRORS", "P50", "P99"]
    assert gateway.split()[:3] == ["gateway", "10", "2"]
    assert jobs.split() == ["jobs", "-", "-", "-", "-"]
    assert "gateway: records: inserted 7" in text
    assert "jobs: not scraped (connection refused)" in text
