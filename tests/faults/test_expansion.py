"""A jobs process that dies in the middle of expanding a manifest: the expansion resumes elsewhere
(after the request's ack wait) and every item is queued, run and recorded exactly once."""

from __future__ import annotations

import io
import json
import urllib.request
import zipfile
from typing import Any

import pytest

from tests.faults.conftest import API_KEY
from tests.faults.harness import FaultStack, Figures, Report
from tests.faults.test_matrix import assert_job_complete

pytestmark = pytest.mark.faults


def upload(stack: FaultStack, body: bytes, content_type: str) -> dict[str, Any]:
    """POST /v1/uploads with raw bytes; the upload resource."""
    request = urllib.request.Request(
        stack.endpoints["http_url"] + "/v1/uploads",
        data=body,
        method="POST",
        headers={"content-type": content_type, "authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        uploaded: dict[str, Any] = json.loads(answer.read())["upload"]
    return uploaded


def expand_and_kill_after_first_chunk(
    stack: FaultStack, photos: list[bytes], total: int
) -> tuple[str, float]:
    """Creates a job from a manifest of ``total`` lines naming photos of a zip, kills the jobs
    process right after it published the manifest's first chunk (FERRY_JOBS_EXPANSION_CHUNK) and
    waits for its replacement; returns the job's name and the seconds the replacement took."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n, photo in enumerate(photos):
            archive.writestr(f"{n}.jpg", photo)
    photo_zip = upload(stack, buffer.getvalue(), "application/zip")
    lines = [json.dumps({"image": f"{photo_zip['name']}/{i % len(photos)}.jpg"}) for i in range(total)]
    manifest = upload(stack, "\n".join(lines).encode(), "application/x-ndjson")

    pid = stack.pid("jobs")
    stack.arm("jobs.expansion_after_chunk")
    status, created = stack.rest.post(
        "/v1/jobs", {"model": "efficientnet-lite0", "manifest": manifest["name"]}
    )
    assert status == 200, created
    assert created["job"]["state"] == "JOB_STATE_EXPANDING", created
    recovery_s = stack.wait_replaced("jobs", pid)
    assert stack.processes()["jobs"]["restarts"] >= 1
    return str(created["job"]["name"]), recovery_s


def test_9_jobs_killed_mid_expansion_queues_every_item_once(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("9", "jobs service dies mid-way through expanding a manifest")
    total = 180  # chunks of 50 (FERRY_JOBS_EXPANSION_CHUNK): the crash comes after the first
    job, figures.recovery_s = expand_and_kill_after_first_chunk(fault_stack, photos, total)
    assert_job_complete(fault_stack, job, total, figures)
    report.add(figures)
