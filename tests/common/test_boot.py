"""A service started with a wrong setting says so in one line naming the environment variable,
and exits 2: it printed a traceback of 20-odd lines, which `ferry up` showed whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("module", "env", "says"),
    [
        (
            "services.gateway",
            {"FERRY_GATEWAY_MAX_TOP_K": "abc"},
            "ferry-gateway: configuration error: FERRY_GATEWAY_MAX_TOP_K='abc': Input should be",
        ),
        (
            "services.jobs",
            {"FERRY_JOBS_CANCEL_CACHE_S": "-1"},
            "FERRY_JOBS_CANCEL_CACHE_S='-1': Input should be",
        ),
        (
            # A bound checked across settings (limits.py) names its variable, not "FERRY_GATEWAY_={...}".
            "services.gateway",
            {"FERRY_GATEWAY_MAX_TOP_K": "5000"},
            "ferry-gateway: configuration error: FERRY_GATEWAY_MAX_TOP_K is 5000; it may be at most",
        ),
        (
            "services.inference",
            {"FERRY_INFERENCE_MODELS": "resnet"},
            "ferry-inference: configuration error: unknown model 'resnet' in FERRY_INFERENCE_MODELS",
        ),
    ],
)
def test_a_wrong_setting_is_one_line_naming_it_and_exit_2(
    module: str, env: dict[str, str], says: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
