"""The client as a user installs it (the built sdist and wheel, each in a fresh virtualenv, no
server code) predicts against the running stack, and finds that stack with no --target: from the
state folder of the checkout's ``ferry up``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.client_install import ClientBuild
from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import CAT_CLASSES

pytestmark = pytest.mark.e2e


def _ferry(env_dir: Path, state_dir: Path, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed ``ferry``, run as a user in a shell would: no FERRY_TARGET, the dev key."""
    env = {k: v for k, v in os.environ.items() if k not in ("FERRY_TARGET", "FERRY_HTTP_PORT")}
    env |= {"FERRY_STATE_DIR": str(state_dir), "FERRY_API_KEY": API_KEY}
    return subprocess.run(
        [str(env_dir / "bin/ferry"), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=env_dir,
    )


@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_the_installed_client_predicts_on_the_running_stack(
    client_build: ClientBuild, stack: dict[str, Any], cat_jpeg: bytes, tmp_path: Path, kind: str
) -> None:
    state_dir = Path(stack["logs_dir"]).parent
    assert (state_dir / "endpoints.json").exists(), state_dir
    env_dir = client_build.venvs[kind]
    helped = _ferry(env_dir, state_dir, "--help")
    # argparse wraps help at hyphens too (a path like /tmp/pytest-of-root/...): compare without white space.
    said = f"now {stack['grpc_target']} (the stack running in {state_dir})"
    assert "".join(said.split()) in "".join(helped.stdout.split()), helped.stdout

    cat = tmp_path / "cat.jpg"
    cat.write_bytes(cat_jpeg)
    predicted = _ferry(env_dir, state_dir, "predict", cat, "--top-k", "2")
    assert predicted.returncode == 0, predicted.stderr
    answer = json.loads(predicted.stdout)
    assert answer["classes"][0]["index"] in CAT_CLASSES, answer
    assert answer["source"] == "PREDICTION_SOURCE_SYNC", answer  # as GetPrediction reads it back

    missing = _ferry(env_dir, state_dir, "predict", tmp_path / "nope.jpg")
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.count("\n") == 1 and "nope.jpg: no such file" in missing.stderr


def test_a_clean_start_prints_no_warning_lines(stack: dict[str, Any]) -> None:
    """What `ferry up` printed up to now (the banner, no RuntimeDirWarning and its code line)."""
    state_dir = Path(stack["logs_dir"]).parent
    printed = (state_dir.parent / f"{state_dir.name}-ferry-up.log").read_text(errors="replace")
    assert "Ferry is up" in printed
    warnings = [line for line in printed.splitlines() if "Warning" in line or "warnings.warn" in line]
    assert not warnings, warnings
