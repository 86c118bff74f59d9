"""Prometheus metrics shared by every service; each service adds its own beside these."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

GRPC_REQUESTS = Counter(
    "ferry_grpc_requests_total",
    "gRPC requests handled, by method and status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "ferry_grpc_request_seconds",
    "Time to handle a gRPC request, by method.",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def start_metrics_server(host: str, port: int) -> None:
    """Serves /metrics on ``host:port`` from a daemon thread; port 0 turns metrics off."""
    if port:
        start_http_server(port, addr=host)
