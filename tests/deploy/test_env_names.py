"""``ferry up`` names every variable it gives a service after a field of that service's settings."""

from __future__ import annotations

from devstack.stack import REPLICA_SHUTDOWN_DELAY_S, service_fields
from tests.deploy.settings_env import SETTINGS, unknown_names


def test_every_variable_ferry_up_sets_is_a_settings_field() -> None:
    targets = {name: "127.0.0.1:1" for name in SETTINGS}
    fields = service_fields(targets, "nats://127.0.0.1:2", 3, "postgresql:///ferry", "key")
    # Set for every service besides these: its ports, host, OTLP endpoint, and a replica's delay.
    common = ["GRPC_HOST", "GRPC_PORT", "METRICS_PORT", "OTLP_ENDPOINT", "SHUTDOWN_DELAY_S"]
    assert REPLICA_SHUTDOWN_DELAY_S > 0
    for service, extra in fields.items():
        names = [f"FERRY_{service.upper()}_{key}" for key in [*common, *extra]]
        assert unknown_names(service, names) == [], service


def test_a_renamed_field_would_be_caught() -> None:
    assert unknown_names("gateway", ["FERRY_GATEWAY_NATS_URLS"]) == ["FERRY_GATEWAY_NATS_URLS"]
