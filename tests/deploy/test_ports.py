"""One table of ports (devstack's SERVICE_PORTS) and of size limits: settings, compose, Envoy, chart agree.

Each check names the file that disagrees, so a port changed in one place fails with where to fix it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from devstack.envoy import MAX_BODY_BYTES, EnvoyOptions
from devstack.infra import NATS_MAX_PAYLOAD
from devstack.stack import SERVICE_PORTS
from services.common.settings import ServiceSettings
from services.gateway.settings import GatewaySettings
from services.inference.settings import InferenceSettings
from services.jobs.settings import JobsSettings
from services.store.settings import StoreSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "inference": InferenceSettings,
    "store": StoreSettings,
    "jobs": JobsSettings,
}


def _yaml(relative: str) -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / relative).read_text())
    assert isinstance(loaded, dict)
    return loaded


def _default(settings: type[BaseSettings], name: str) -> int:
    value = settings.model_fields[name].default
    assert isinstance(value, int)
    return value


def test_the_table_covers_every_service() -> None:
    assert set(SERVICE_PORTS) == set(SETTINGS)


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_settings_defaults_match_the_table(service: str) -> None:
    grpc, metrics = SERVICE_PORTS[service]
    settings = SETTINGS[service]
    where = (
        f"services/{service}/settings.py ({settings.__name__}) disagrees with devstack/stack.py SERVICE_PORTS"
    )
    assert (_default(settings, "grpc_port"), _default(settings, "metrics_port")) == (grpc, metrics), where


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_helm_values_match_the_table(service: str) -> None:
    values = _yaml("deploy/helm/ferry/values.yaml")[service]
    where = f"deploy/helm/ferry/values.yaml {service}.grpcPort/metricsPort disagree with SERVICE_PORTS"
    assert (values["grpcPort"], values["metricsPort"]) == SERVICE_PORTS[service], where


def test_compose_matches_the_table() -> None:
    compose = _yaml("docker-compose.yml")["services"]
    for service, (grpc, metrics) in SERVICE_PORTS.items():
        env = compose[service]["environment"]
        prefix = f"FERRY_{service.upper()}_"
        where = f"docker-compose.yml, service {service}"
        assert int(env[f"{prefix}METRICS_PORT"]) == metrics, f"{where}: {prefix}METRICS_PORT"
        if f"{prefix}GRPC_PORT" in env:
            assert int(env[f"{prefix}GRPC_PORT"]) == grpc, f"{where}: {prefix}GRPC_PORT"
        probe = compose[service].get("healthcheck", {}).get("test", [])
        for address in (a for a in probe if re.fullmatch(r"[\w.]+:\d+", str(a))):
            assert int(address.rpartition(":")[2]) == grpc, f"{where}: healthcheck probes {address}"
    # Every target one service gives another (FERRY_X_INFERENCE_TARGET: inference:50052, ...).
    for name, spec in compose.items():
        for key, value in (spec.get("environment") or {}).items():
            found = re.fullmatch(r"(\w+):(\d+)", str(value))
            if key.endswith("_TARGET") and found and found[1] in SERVICE_PORTS:
                expected = SERVICE_PORTS[found[1]][0]
                assert int(found[2]) == expected, f"docker-compose.yml, service {name}: {key}={value}"


def test_envoy_reaches_the_gateway_on_its_port() -> None:
    gateway = SERVICE_PORTS["gateway"][0]
    assert EnvoyOptions().gateway_port == gateway, "devstack/envoy.py EnvoyOptions.gateway_port"
    config = (ROOT / "deploy/envoy/envoy.yaml").read_text()
    ports = re.findall(r"address: gateway, port_value: (\d+)", config)
    assert ports and {int(p) for p in ports} == {gateway}, "deploy/envoy/envoy.yaml's gateway cluster"
    # The upload lane's gateways listen where every gateway does (the same program and settings).
    lane = re.findall(r"address: gateway-uploads, port_value: (\d+)", config)
    # Its clusters: the uploads' streams and the large OIP REST bodies' unary calls.
    assert [int(p) for p in lane] == [gateway, gateway], "deploy/envoy/envoy.yaml's gateway_uploads clusters"


def test_message_limits_agree_from_the_edge_to_the_services() -> None:
    """A body Envoy lets through fits every gRPC server's message limit, and the largest image fits it."""
    message = ServiceSettings.model_fields["max_message_bytes"].default
    assert MAX_BODY_BYTES == message, "devstack/envoy.py MAX_BODY_BYTES vs services/common/settings.py"
    image = _default(GatewaySettings, "max_image_bytes")
    # REST carries images base64 in JSON: 4 bytes per 3, plus the rest of the request.
    assert image * 4 // 3 + 64 * 1024 <= MAX_BODY_BYTES, "gateway max_image_bytes does not fit a REST body"


def test_nats_payload_limit_is_the_same_locally_and_in_compose() -> None:
    command = _yaml("docker-compose.yml")["services"]["nats"]["command"]
    compose_limit = int(command[command.index("--max_payload") + 1])
    assert compose_limit == NATS_MAX_PAYLOAD, "docker-compose.yml nats --max_payload vs devstack/infra.py"
