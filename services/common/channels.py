"""Outgoing gRPC channels with Ferry's defaults: trace propagation and raised message limits."""

from __future__ import annotations

import grpc

from services.common.interceptors import TracingClientInterceptor


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options shared by servers and channels: message limits raised deliberately for images."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def open_channel(target: str, max_message_bytes: int) -> grpc.aio.Channel:
    """Opens an insecure channel to another Ferry service on the internal network."""
    return grpc.aio.insecure_channel(
        target,
        options=channel_options(max_message_bytes),
        interceptors=[TracingClientInterceptor()],
    )
