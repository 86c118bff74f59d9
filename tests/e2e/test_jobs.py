"""Asynchronous batch jobs: accepted at once, run by the jobs runner, recorded by store."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.e2e.rest import Rest, b64

pytestmark = pytest.mark.e2e

FINISHED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


def create_job(rest: Rest, images: list[bytes], **extra: Any) -> dict[str, Any]:
    body = {
        "model": "efficientnet-lite0",
        "inputs": [{"image": {"content": b64(i)}} for i in images],
        **extra,
    }
    status, answer = rest.post("/v1/jobs", body)
    assert status == 200, answer
    return answer["job"]


def wait_finished(rest: Rest, name: str) -> dict[str, Any]:
    status, body = rest.poll(f"/v1/{name}", lambda s, b: s == 200 and b["job"]["state"] in FINISHED, 120)
    assert status == 200, body
    assert body["job"]["state"] in FINISHED, body
    return body["job"]


def job_rows(database_url: str, job_name: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(database_url)
        try:
            job_id = uuid.UUID(job_name.removeprefix("jobs/"))
            query = "SELECT item_index, state FROM predictions WHERE job_id = $1 ORDER BY item_index"
            return list(await connection.fetch(query, job_id))
        finally:
            await connection.close()

    return asyncio.run(fetch())


def test_job_runs_every_item_and_records_it(
    rest: Rest, stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    job = create_job(rest, [cat_jpeg, coffee_jpeg])
    assert job["name"].startswith("jobs/")
    assert job["items_total"] == 2
    done = wait_finished(rest, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED"
    assert (done["items_succeeded"], done["items_failed"]) == (2, 0)

    status, listing = rest.get(f"/v1/predictions?job={job['name']}")
    assert status == 200, listing
    items = listing["predictions"]
    assert [p["item_index"] for p in items] == [0, 1]
    assert items[0]["classes"][0]["index"] in CAT_CLASSES
    assert items[1]["classes"][0]["index"] == ESPRESSO
    assert all(p["job"] == job["name"] for p in items)
    assert [r["item_index"] for r in job_rows(stack["database_url"], job["name"])] == [0, 1]


def test_a_bad_item_fails_alone_and_the_job_says_so(rest: Rest, cat_jpeg: bytes) -> None:
    job = create_job(rest, [cat_jpeg, b"this is not an image"])
    done = wait_finished(rest, job["name"])
    assert done["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"
    assert (done["items_succeeded"], done["items_failed"]) == (1, 1)
    assert done["error"]["code"] == 3  # INVALID_ARGUMENT: what its failed item got
    assert "1 of 2 items failed" in done["error"]["message"]
    assert ":retry" in done["error"]["message"]
    status, listing = rest.get(f"/v1/predictions?job={job['name']}")
    assert status == 200
    failed = listing["predictions"][1]
    assert failed["state"] == "PREDICTION_STATE_FAILED"
    assert failed["error"]["code"] == 3  # INVALID_ARGUMENT
    assert "image" in failed["error"]["message"]


def test_a_job_of_bad_images_only_is_failed(rest: Rest) -> None:
    done = wait_finished(rest, create_job(rest, [b"not an image", b"nor this"])["name"])
    assert done["state"] == "JOB_STATE_FAILED"
    assert (done["items_succeeded"], done["items_failed"]) == (0, 2)
    assert done["error"]["details"][0]["reason"] == "ITEMS_FAILED"


def test_retry_runs_the_failed_items_again_once(rest: Rest, stack: dict[str, Any], cat_jpeg: bytes) -> None:
    job = create_job(rest, [cat_jpeg, b"this is not an image", cat_jpeg])
    wait_finished(rest, job["name"])
    status, body = rest.post(f"/v1/{job['name']}:retry", {})
    assert status == 200, body
    assert body["items_retried"] == 1
    assert body["job"]["retry_count"] == 1
    again = wait_finished(rest, job["name"])
    # The bad image fails again (a permanent error): still one failed item, not two, one row each.
    assert again["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"
    assert (again["items_succeeded"], again["items_failed"], again["retry_count"]) == (2, 1, 1)
    assert [r["item_index"] for r in job_rows(stack["database_url"], job["name"])] == [0, 1, 2]


def test_retry_of_a_job_without_failures_queues_nothing(rest: Rest, cat_jpeg: bytes) -> None:
    job = create_job(rest, [cat_jpeg])
    wait_finished(rest, job["name"])
    status, body = rest.post(f"/v1/{job['name']}:retry", {})
    assert status == 200, body
    assert body["items_retried"] == 0
    assert body["job"]["state"] == "JOB_STATE_SUCCEEDED"


def test_request_id_makes_create_idempotent(rest: Rest, stack: dict[str, Any], cat_jpeg: bytes) -> None:
    request_id = f"retry-{uuid.uuid4()}"
    first = create_job(rest, [cat_jpeg], request_id=request_id)
    second = create_job(rest, [cat_jpeg], request_id=request_id)
    assert second["name"] == first["name"]
    done = wait_finished(rest, first["name"])
    assert (done["items_succeeded"], done["items_failed"]) == (1, 0)
    assert len(job_rows(stack["database_url"], first["name"])) == 1


def test_cancel_job(rest: Rest, cat_jpeg: bytes) -> None:
    job = create_job(rest, [cat_jpeg] * 30)
    status, body = rest.post(f"/v1/{job['name']}:cancel", {})
    assert status == 200, body
    cancelled = body["job"]
    # The job may have finished before the cancel arrived; then it keeps its final state.
    assert cancelled["state"] in {"JOB_STATE_CANCELLED", "JOB_STATE_SUCCEEDED"}
    if cancelled["state"] == "JOB_STATE_CANCELLED":
        later = wait_finished(rest, job["name"])
        assert later["state"] == "JOB_STATE_CANCELLED"


def test_list_jobs_newest_first(rest: Rest, cat_jpeg: bytes) -> None:
    older = create_job(rest, [cat_jpeg])
    newer = create_job(rest, [cat_jpeg])
    status, body = rest.get("/v1/jobs?page_size=2")
    assert status == 200, body
    assert [j["name"] for j in body["jobs"]] == [newer["name"], older["name"]]
