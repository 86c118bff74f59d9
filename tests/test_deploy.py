"""The container deployment files are valid, checked offline (CI has no Docker engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert set(done.stdout.split()) == {"nats", "postgres", "store", "inference", "jobs", "gateway", "envoy"}
    rendered = run(str(BIN / "docker-compose"), "-f", "docker-compose.yml", "config", "--format", "json")

    services = json.loads(rendered.stdout)["services"]
    assert [name for name, spec in services.items() if spec.get("ports")] == ["envoy"]


def test_dockerfile_passes_hadolint() -> None:
    done = run(str(BIN / "hadolint"), "--failure-threshold", "warning", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr
