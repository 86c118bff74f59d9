"""The jobs service owns the job queue: a job created through the public API is recorded and
queued by it (its JobQueueService, in ``ferry up``'s ``jobs-queue`` process, answers the gateway's
SubmitJob), then run by the runner (``jobs``); a restart of both between two tries of one CreateJob
loses and duplicates nothing."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devstack.stack import JOB_QUEUE
from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY
from tests.e2e.test_jobs import create_job, job_rows, wait_finished

pytestmark = pytest.mark.e2e


def queue_calls(stack: dict[str, Any], method: str) -> float:
    """How many JobQueueService ``method`` calls the job queue's process answered OK (its /metrics)."""
    host = urlsplit(stack["http_url"]).hostname
    port = stack["services"][JOB_QUEUE]["metrics_port"]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    pattern = (
        r'^ferry_grpc_requests_total\{(?=[^}]*code="OK")(?=[^}]*method="[^"]*JobQueueService/'
        + method
        + r'")[^}]*\} (\S+)$'
    )
    return sum(float(v) for v in re.findall(pattern, text, flags=re.M))


def test_a_job_is_recorded_and_queued_by_the_jobs_service_and_runs(
    rest: Rest, stack: dict[str, Any], coffee_jpeg: bytes
) -> None:
    before = queue_calls(stack, "SubmitJob")
    job = create_job(rest, [coffee_jpeg] * 3)
    assert job["state"] == "JOB_STATE_QUEUED" and job["items_total"] == 3, job

    assert queue_calls(stack, "SubmitJob") == before + 1  # the gateway handed it to the queue
    done = wait_finished(rest, job["name"])
    assert (done["state"], done["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 3), done
    rows = job_rows(stack["database_url"], job["name"])
    assert [r["item_index"] for r in rows] == [0, 1, 2]

    before = queue_calls(stack, "CancelJob")
    status, body = rest.post(f"/v1/{job['name']}:cancel", {})
    assert status == 200 and body["job"]["state"] == "JOB_STATE_SUCCEEDED", body  # finished: kept
    assert queue_calls(stack, "CancelJob") == before + 1


def test_a_jobs_restart_between_two_tries_of_a_create_neither_loses_nor_duplicates_items(
    rest: Rest, stack: dict[str, Any], coffee_jpeg: bytes
) -> None:
    request_id = f"restart-{uuid.uuid4()}"
    first = create_job(rest, [coffee_jpeg] * 5, request_id=request_id)

    env = {**os.environ, "FERRY_STATE_DIR": str(Path(stack["logs_dir"]).parent)}
    done = subprocess.run(
        [FERRY, "restart", JOB_QUEUE, "jobs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    # The client's retry reaches the new jobs process: the same job, its items queued once.
    again = create_job(rest, [coffee_jpeg] * 5, request_id=request_id)
    assert again["name"] == first["name"]
    assert queue_calls(stack, "SubmitJob") >= 1  # the new process answered it
    finished = wait_finished(rest, first["name"])
    assert (finished["state"], finished["items_total"], finished["items_succeeded"]) == (
        "JOB_STATE_SUCCEEDED",
        5,
        5,
    ), finished
    rows = job_rows(stack["database_url"], first["name"])
    assert [r["item_index"] for r in rows] == [0, 1, 2, 3, 4]  # each item once, none lost
    # The same request_id for a different job is still refused, now by the queue.
    status, body = rest.post(
        "/v1/jobs",
        {
            "model": "efficientnet-lite0",
            "inputs": [{"image": {"content": b64(coffee_jpeg)}}] * 2,
            "request_id": request_id,
        },
    )
    assert status == 409 and "REQUEST_ID_REUSED" in str(body), body
