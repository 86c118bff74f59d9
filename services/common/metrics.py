"""Prometheus metrics shared by every service; each service adds its own beside these."""

from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer

from prometheus_client import Counter, Histogram
from prometheus_client.exposition import MetricsHandler

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


class _ReusePortServer(ThreadingHTTPServer):
    """An HTTP server that shares its port with a replacement process (SO_REUSEPORT).

    A rolling restart starts the new process while the old one still serves; with
    ``prometheus_client.start_http_server`` the new one would die with EADDRINUSE.
    """

    allow_reuse_port = True
    daemon_threads = True

    def __init__(self, host: str, port: int) -> None:
        # IPv4 or IPv6, whichever ``host`` is (the base class assumes IPv4).
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        super().__init__((host, port), MetricsHandler)


def start_metrics_server(host: str, port: int) -> ThreadingHTTPServer | None:
    """Serves /metrics on ``host:port`` from a daemon thread; port 0 turns metrics off."""
    if not port:
        return None
    server = _ReusePortServer(host, port)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
