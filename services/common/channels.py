"""gRPC options and outgoing channels with Ferry's defaults.

Clients and servers agree on keepalive: a client pings an idle connection every 20 s, and every
server accepts pings that often, so no side answers ``GOAWAY ENHANCE_YOUR_CALM``. Clients
reconnect within 2 s of a peer coming back (gRPC's default backoff grows to 120 s, which would
turn a 5-second restart into minutes of UNAVAILABLE).
"""

from __future__ import annotations

import grpc

from services.common.interceptors import TracingClientInterceptor

KEEPALIVE_TIME_MS = 20_000
"""How often a client pings an idle connection to notice a dead peer."""
MAX_RECONNECT_BACKOFF_MS = 2_000
"""Longest wait between reconnection attempts to a peer that is down."""

Options = list[tuple[str, int | str]]


def _message_limits(max_message_bytes: int) -> Options:
    # Images travel inside messages, so the 4 MiB default is raised deliberately.
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def server_options(max_message_bytes: int) -> Options:
    """Options of every Ferry gRPC server: message limits, and a ping policy clients satisfy."""
    return [
        *_message_limits(max_message_bytes),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ("grpc.http2.max_ping_strikes", 0),
        # SO_REUSEPORT (gRPC's default on Linux, stated here because rolling restarts rely on it):
        # a replacement process binds the same port while the old one drains.
        ("grpc.so_reuseport", 1),
    ]


def channel_options(max_message_bytes: int) -> Options:
    """Options of every channel to another Ferry service."""
    return [
        *_message_limits(max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        # Spread calls over every address a target resolves to (dns:///inference:50052 in
        # Kubernetes lists each replica), so replicas an autoscaler adds get traffic at once.
        ("grpc.lb_policy_name", "round_robin"),
    ]


def open_channel(target: str, max_message_bytes: int) -> grpc.aio.Channel:
    """Opens an insecure channel to another Ferry service on the internal network."""
    return grpc.aio.insecure_channel(
        target,
        options=channel_options(max_message_bytes),
        interceptors=[TracingClientInterceptor()],
    )
