"""Servers ask clients to reconnect after an age, so callers re-resolve and reach new replicas."""

from __future__ import annotations

from services.common.channels import server_options
from services.common.settings import ServiceSettings
from services.inference.settings import InferenceSettings


def test_age_options_follow_the_settings() -> None:
    options = dict(server_options(1 << 20, 30.0, 5.0))
    assert options["grpc.max_connection_age_ms"] == 30_000
    assert options["grpc.max_connection_age_grace_ms"] == 5_000


def test_no_age_keeps_connections() -> None:
    assert "grpc.max_connection_age_ms" not in dict(server_options(1 << 20))
    assert ServiceSettings().max_connection_age_s == 0  # WatchJob streams would be cut


def test_inference_connections_age() -> None:
    """Gateways and runners balance over inference replicas; an age brings new ones into rotation."""
    assert InferenceSettings().max_connection_age_s > 0
