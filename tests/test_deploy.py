"""The container deployment files are valid, checked offline (CI has no Docker engine).

The Helm chart and the observability files have their own tests in tests/deploy/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FERRY_DEV_API_KEY": "compose-check"}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_compose_file_is_valid() -> None:
    done = run(str(BIN / "docker-compose"), "-f", "docker-compose.yml", "config", "--quiet")
    assert done.returncode == 0, done.stderr


def test_compose_runs_every_service_and_publishes_only_envoy() -> None:
    done = run(str(BIN / "docker-compose"), "-f", "docker-compose.yml", "config", "--services")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {
        "nats",
        "postgres",
        "store",
        "inference",
        "jobs",
        "gateway",
        "gateway-uploads",  # the upload lane (tests/deploy/test_upload_lane.py)
        "envoy",
    }
    rendered = run(str(BIN / "docker-compose"), "-f", "docker-compose.yml", "config", "--format", "json")

    services = json.loads(rendered.stdout)["services"]
    assert [name for name, spec in services.items() if spec.get("ports")] == ["envoy"]


def test_gpu_override_reserves_one_gpu_for_inference_from_the_cuda_image() -> None:
    done = run(
        str(BIN / "docker-compose"),
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.gpu.yml",
        "config",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    inference = services["inference"]
    assert inference["build"]["dockerfile"] == "Dockerfile.cuda"
    [device] = inference["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert [name for name, spec in services.items() if "deploy" in spec] == ["inference"]


def test_observability_profile_wires_prometheus_and_grafana_to_the_repositorys_files() -> None:
    done = run(
        str(BIN / "docker-compose"),
        "-f",
        "docker-compose.yml",
        "--profile",
        "observability",
        "config",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert {"otel-collector", "nats-exporter", "prometheus", "grafana"} <= services.keys()
    for name in ("prometheus", "grafana", "otel-collector"):
        for volume in services[name]["volumes"]:
            assert Path(volume["source"]).exists(), volume["source"]
    # Prometheus and Grafana are published on localhost only; the public port stays Envoy's.
    assert {p["host_ip"] for n in ("prometheus", "grafana") for p in services[n]["ports"]} == {"127.0.0.1"}


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    done = run(str(BIN / "hadolint"), "--failure-threshold", "warning", dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_installs_dependencies_before_copying_code_and_runs_non_root(dockerfile: str) -> None:
    lines = [line.strip() for line in (ROOT / dockerfile).read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(instructions) if line.startswith(prefix))

    installs_deps = first("RUN python deploy/docker/requirements.py torch")
    assert first("COPY pyproject.toml") < installs_deps < first("COPY services")
    assert first("USER 10001") > first("COPY clients")
    assert any(line.startswith("HEALTHCHECK") for line in instructions)


def test_image_requirements_are_pyprojects_dependencies() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = run(sys.executable, "deploy/docker/requirements.py", "torch").stdout.split()
    rest = run(sys.executable, "deploy/docker/requirements.py", "rest").stdout.split()
    assert torch == ["torch==2.14.1", "torchvision==0.29.1"]
    # The client package comes from clients/python, with the code (Dockerfile's last layers).
    assert sorted([*torch, *rest, "ferry-client==0.1.0"]) == sorted(d.replace(" ", "") for d in deps)
