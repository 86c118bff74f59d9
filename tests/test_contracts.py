"""Contracts: buf lint is clean, and committed stubs, descriptor set and Envoy config are fresh."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from devstack.envoy import COMMITTED_CONFIG, EnvoyOptions, container_options, render
from tools import openapi, protogen

BUF = str(Path(sys.executable).parent / "buf")


def test_buf_lint_is_clean() -> None:
    done = subprocess.run([BUF, "lint"], cwd=protogen.ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_python_is_fresh(tmp_path: Path) -> None:
    protogen.generate_python(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(protogen.GEN_PYTHON)
        for p in protogen.GEN_PYTHON.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == committed, "run `make protos` and commit gen/"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, protogen.GEN_PYTHON / p, shallow=False)]
    assert stale == [], "run `make protos` and commit gen/"


def test_descriptor_set_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "ferry.pb"
    protogen.generate_descriptor_set(out)
    assert out.read_bytes() == protogen.DESCRIPTOR_SET.read_bytes(), (
        "run `make protos` and commit deploy/envoy/ferry.pb"
    )


def test_committed_envoy_config_is_fresh() -> None:
    assert COMMITTED_CONFIG.read_text() == render(container_options()), (
        "run `python -m devstack.envoy` and commit"
    )


def test_openapi_description_is_fresh_and_valid() -> None:
    committed = openapi.OPENAPI_FILE.read_text()
    assert committed == openapi.render_text(), "run `python -m tools.openapi` and commit deploy/openapi/"
    validate(json.loads(committed))  # OpenAPI 3.0's schema and rules (openapi-spec-validator)


@pytest.mark.parametrize("otlp_endpoint", ["", "http://127.0.0.1:4317"], ids=["plain", "traced"])
def test_envoy_accepts_the_config(tmp_path: Path, otlp_endpoint: str) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(render(EnvoyOptions(otlp_endpoint=otlp_endpoint)))
    envoy = str(Path(sys.executable).parent / "envoy")
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
