"""Native gRPC on the same port as REST: grpcurl through reflection, and the Python client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from ferry.jobs.v1 import job_pb2
from ferry_client import FerryClient, FerryError
from tests.e2e.conftest import API_KEY
from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.e2e.rest import b64

pytestmark = pytest.mark.e2e

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
PUBLIC = {
    "ferry.models.v1.ModelService",
    "ferry.predictions.v1.PredictionService",
    "ferry.jobs.v1.JobService",
}


def test_grpcurl_lists_services_through_envoy(stack: dict[str, Any]) -> None:
    done = subprocess.run(
        [GRPCURL, "-plaintext", stack["grpc_target"], "list"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert PUBLIC <= set(done.stdout.split())


def test_grpcurl_predicts_through_envoy(stack: dict[str, Any], coffee_jpeg: bytes) -> None:
    request = json.dumps({"model": "models/efficientnet-lite0", "image": {"content": b64(coffee_jpeg)}})
    done = subprocess.run(
        [
            GRPCURL, "-plaintext", "-H", f"authorization: Bearer {API_KEY}", "-d", "@",
            stack["grpc_target"], "ferry.models.v1.ModelService/Predict",
        ],
        input=request, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prediction"]["classes"][0]["index"] == ESPRESSO


def test_python_client_predicts_and_runs_a_job(
    stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    with FerryClient(stack["grpc_target"], API_KEY) as ferry:
        assert "models/efficientnet-lite0" in [m.name for m in ferry.list_models()]
        prediction = ferry.predict(cat_jpeg)
        assert prediction.classes[0].index in CAT_CLASSES
        job = ferry.wait_job(ferry.create_job([cat_jpeg, coffee_jpeg]).name, timeout_s=120)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        assert (job.items_succeeded, job.items_failed) == (2, 0)


def test_python_client_reports_status_codes(stack: dict[str, Any]) -> None:
    with FerryClient(stack["grpc_target"], API_KEY) as ferry, pytest.raises(FerryError) as caught:
        ferry.predict(b"not an image")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
