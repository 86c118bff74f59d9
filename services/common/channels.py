"""gRPC options and outgoing channels with Ferry's defaults.

Clients and servers agree on keepalive: a client pings an idle connection every 20 s, and every
server accepts pings that often, so no side answers ``GOAWAY ENHANCE_YOUR_CALM``. Clients
reconnect within 2 s of a peer coming back (gRPC's default backoff grows to 120 s, which would
turn a 5-second restart into minutes of UNAVAILABLE).

A target may name several replicas (``127.0.0.1:50052,127.0.0.1:50062``, as ``ferry up`` does with
``FERRY_INFERENCE_INSTANCES``): one channel then balances calls round robin over every replica whose
gRPC health says SERVING, so a replica that is down, starting or draining gets no new calls.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated

import grpc
from pydantic import AfterValidator

from services.common import limits
from services.common.interceptors import TracingClientInterceptor

KEEPALIVE_TIME_MS = 20_000
"""How often a client pings an idle connection to notice a dead peer."""
MAX_RECONNECT_BACKOFF_MS = 2_000
"""Longest wait between reconnection attempts to a peer that is down."""

Options = list[tuple[str, int | str]]


def _balanced_service_config(health_service: str) -> str:
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            # Client-side health checking: each replica's Health.Watch stream tells the balancer
            # whether it serves; NOT_SERVING (loading, draining) takes it out of the rotation.
            "healthCheckConfig": {"serviceName": health_service},
        }
    )


_SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock"})


def grpc_target(targets: str) -> str:
    """Turns a comma-separated list of ``host:port`` replicas into one gRPC channel target.

    One address (or anything with a scheme, such as ``dns:///inference:50052``) is returned as
    it is. Several become an ``ipv4:`` (or ``ipv6:``) target listing them all, which one channel
    balances over; gRPC's static lists take IP addresses only (``localhost`` is read as 127.0.0.1).

    Raises:
        ValueError: several addresses where one is not ``IP:port``, or IPv4 and IPv6 mixed; the
            message says what to write instead.
    """
    if targets.strip().split(":", 1)[0] in _SCHEMES:
        return targets.strip()  # already a gRPC target (this function's own output, say)
    parts = [part.strip() for part in targets.split(",") if part.strip()]
    if not parts:
        raise ValueError("no target given; write host:port, or several as host1:port1,host2:port2")
    if len(parts) == 1:
        return parts[0]
    families = set()
    addresses = []
    for part in parts:
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{part!r} in {targets!r} has no port; write IP:port")
        host = "127.0.0.1" if host == "localhost" else host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{part!r} in {targets!r}: a list of replicas takes IP:port entries; for host names "
                "give one DNS name that resolves to every replica (dns:///inference:50052)"
            ) from None
        families.add(ip.version)
        addresses.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) > 1:
        raise ValueError(f"{targets!r} mixes IPv4 and IPv6 addresses; list one family only")
    return f"ipv{families.pop()}:{','.join(addresses)}"


def is_balanced(target: str) -> bool:
    """Whether ``target`` (from ``grpc_target``) lists several replicas."""
    return "," in target


Targets = Annotated[str, AfterValidator(grpc_target)]
"""A settings field naming one service by one or several ``host:port`` replicas, comma-separated."""


def _message_limits(max_message_bytes: int) -> Options:
    # Images travel inside messages, so the 4 MiB default is raised deliberately.
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def server_options(
    max_message_bytes: int, max_connection_age_s: float = 0.0, max_connection_age_grace_s: float = 0.0
) -> Options:
    """Options of every Ferry gRPC server: message limits, a ping policy clients satisfy, and an age.

    Args:
        max_message_bytes: the largest message sent or received.
        max_connection_age_s: after this long (gRPC adds up to 10 % jitter) the server sends
            GOAWAY and the client reconnects, resolving the name again: replicas added since it
            connected enter its rotation. 0 keeps connections forever.
        max_connection_age_grace_s: how long calls under way on an aged connection may still run.
    """
    age: Options = []
    if max_connection_age_s > 0:
        age = [
            ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max_connection_age_grace_s * 1000)),
        ]
    return [
        *age,
        *_message_limits(max_message_bytes),
        ("grpc.max_metadata_size", limits.SERVICE_METADATA_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ("grpc.http2.max_ping_strikes", 0),
        # SO_REUSEPORT (gRPC's default on Linux, stated here because rolling restarts rely on it):
        # a replacement process binds the same port while the old one drains.
        ("grpc.so_reuseport", 1),
    ]


def channel_options(max_message_bytes: int, balanced: bool = False, health_service: str = "") -> Options:
    """Options of every channel to another Ferry service.

    Args:
        max_message_bytes: the largest message sent or received.
        balanced: the target lists several replicas: add client-side health checking, so calls go
            only to replicas that serve. (Single targets keep the plain behaviour, where a caller
            waiting for a loading service sees its NOT_SERVING answer.)
        health_service: the health name the balancer watches: "" (the whole service) unless the
            calls need less than the service's background work (jobs' queue API, which needs no
            inference: see ``Readiness.set_dependency``).
    """
    balancing: Options = (
        [("grpc.service_config", _balanced_service_config(health_service))] if balanced else []
    )
    return [
        *balancing,
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


def open_channel(
    target: str, max_message_bytes: int, health_service: str = "", health_checked: bool = True
) -> grpc.aio.Channel:
    """Opens an insecure channel to another Ferry service on the internal network.

    Args:
        target: ``host:port``, several replicas comma-separated, or a gRPC target (``grpc_target``).
        max_message_bytes: the largest message sent or received.
        health_service: see ``channel_options``.
        health_checked: several replicas' calls go only to those that serve (False: to any
            replica, round robin, for calls that must reach one that is loading).
    """
    target = grpc_target(target)
    return grpc.aio.insecure_channel(
        target,
        options=channel_options(
            max_message_bytes, balanced=is_balanced(target) and health_checked, health_service=health_service
        ),
        interceptors=[TracingClientInterceptor()],
    )
