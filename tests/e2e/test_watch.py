"""WatchJob: a job's progress streamed until it finishes, over gRPC and as JSON lines over REST."""

from __future__ import annotations

import itertools
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from ferry.jobs.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from tests.e2e.conftest import API_KEY
from tests.e2e.rest import Rest
from tests.e2e.stack import FERRY
from tests.e2e.test_jobs import create_job

pytestmark = pytest.mark.e2e


def _settled(counts: list[tuple[int, int]]) -> bool:
    """Counts only grow: a watcher never sees progress go backwards."""
    return all(a <= b for pair in itertools.pairwise(counts) for a, b in zip(*pair, strict=True))


def test_watch_over_grpc_streams_until_the_job_finishes(
    rest: Rest, stack: dict[str, Any], cat_jpeg: bytes
) -> None:
    job = create_job(rest, [cat_jpeg] * 12)
    with grpc.insecure_channel(stack["grpc_target"]) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        updates = list(
            stub.WatchJob(
                job_service_pb2.WatchJobRequest(name=job["name"]),
                metadata=(("authorization", f"Bearer {API_KEY}"),),
                timeout=120,
            )
        )
    assert updates, "the stream answered nothing"
    last = updates[-1].job
    assert last.state == job_pb2.JOB_STATE_SUCCEEDED
    assert (last.items_succeeded, last.items_failed) == (12, 0)
    assert _settled([(u.job.items_succeeded, u.job.items_failed) for u in updates])
    assert all(u.eta_seconds >= 0 and u.items_per_second >= 0 for u in updates)


def test_watch_over_rest_is_one_json_object_per_line(
    rest: Rest, stack: dict[str, Any], cat_jpeg: bytes
) -> None:
    job = create_job(rest, [cat_jpeg] * 4)
    request = urllib.request.Request(
        f"{stack['http_url']}/v1/{job['name']}:watch", headers={"authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200
        lines = [line for line in answer.read().decode().splitlines() if line.strip()]
    updates = [json.loads(line) for line in lines]
    assert updates[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert updates[-1]["job"]["items_succeeded"] == 4
    assert {"items_per_second", "eta_seconds"} <= set(updates[-1])


def test_watching_an_unknown_job_is_not_found(stack: dict[str, Any]) -> None:
    with grpc.insecure_channel(stack["grpc_target"]) as channel, pytest.raises(grpc.RpcError) as caught:
        list(
            job_service_pb2_grpc.JobServiceStub(channel).WatchJob(
                job_service_pb2.WatchJobRequest(name="jobs/0193a3f4-0000-7000-8000-000000000000"),
                metadata=(("authorization", f"Bearer {API_KEY}"),),
                timeout=30,
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_job_wait_shows_progress_and_prints_the_finished_job(
    stack: dict[str, Any], cat_jpeg: bytes, tmp_path: Path
) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(cat_jpeg)
    done = subprocess.run(
        [
            FERRY,
            "--target",
            stack["grpc_target"],
            "--api-key",
            API_KEY,
            "job",
            str(photo),
            str(photo),
            "--wait",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    finished = json.loads(done.stdout)
    assert (finished["state"], finished["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 2)
    assert "2/2" in done.stderr  # the progress bar reached the end
