"""Job features through Envoy's REST on the whole local stack: priorities, item listings, results."""

from __future__ import annotations

import json
import struct
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY
from tests.e2e.test_jobs import create_job, wait_finished

pytestmark = pytest.mark.e2e


def test_a_job_keeps_its_priority_and_runs(rest: Rest, cat_jpeg: bytes) -> None:
    job = create_job(rest, [cat_jpeg], priority="PRIORITY_HIGH")
    assert job["priority"] == "PRIORITY_HIGH"
    done = wait_finished(rest, job["name"])
    assert (done["state"], done["priority"]) == ("JOB_STATE_SUCCEEDED", "PRIORITY_HIGH")
    status, body = rest.get(f"/v1/{job['name']}")
    assert (status, body["job"]["priority"]) == (200, "PRIORITY_HIGH")


def test_a_job_without_priority_is_normal_and_an_unknown_one_is_refused(rest: Rest, cat_jpeg: bytes) -> None:
    assert create_job(rest, [cat_jpeg])["priority"] == "PRIORITY_NORMAL"
    inputs = [{"image": {"content": b64(cat_jpeg)}}]
    status, body = rest.post("/v1/jobs", {"model": "efficientnet-lite0", "inputs": inputs, "priority": 7})
    assert status == 400 and "priority" in body["message"], body


def test_list_job_items_filters_by_state_and_shows_dead_letters(rest: Rest, cat_jpeg: bytes) -> None:
    job = create_job(rest, [cat_jpeg, b"this is not an image", cat_jpeg, b"nor is this"])
    wait_finished(rest, job["name"])

    status, failed = rest.get(f"/v1/{job['name']}/items?state=PREDICTION_STATE_FAILED")
    assert status == 200, failed
    assert [i["index"] for i in failed["items"]] == [1, 3]
    for item in failed["items"]:
        assert item["prediction"]["state"] == "PREDICTION_STATE_FAILED"
        assert item["prediction"]["error"]["code"] == 3  # INVALID_ARGUMENT
        assert item["dead_lettered"] is True
        assert item["dead_letter_reason"] == _reason(item["prediction"]["error"])

    status, succeeded = rest.get(f"/v1/{job['name']}/items?state=PREDICTION_STATE_SUCCEEDED")
    assert status == 200, succeeded
    assert [i["index"] for i in succeeded["items"]] == [0, 2]
    assert not any(i.get("dead_lettered") for i in succeeded["items"])

    status, first = rest.get(f"/v1/{job['name']}/items?page_size=3")
    assert status == 200 and [i["index"] for i in first["items"]] == [0, 1, 2]
    token = quote(first["next_page_token"])
    status, rest_of = rest.get(f"/v1/{job['name']}/items?page_size=3&page_token={token}")
    assert status == 200 and [i["index"] for i in rest_of["items"]] == [3]
    assert not rest_of.get("next_page_token")


def test_list_job_items_of_an_unknown_job_is_not_found(rest: Rest) -> None:
    status, body = rest.get("/v1/jobs/00000000-0000-4000-8000-000000000000/items")
    assert status == 404, body


def as_float32(value: Any) -> Any:
    """``value`` with every float rounded to the float32 it stands for (scores are float32)."""
    if isinstance(value, float):
        return struct.unpack("f", struct.pack("f", value))[0]
    if isinstance(value, list):
        return [as_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    return value


def results_over_rest(stack: dict[str, Any], name: str) -> tuple[int, list[str]]:
    request = urllib.request.Request(
        f"{stack['http_url']}/v1/{name}/results", headers={"authorization": f"Bearer {API_KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, [line for line in answer.read().decode().splitlines() if line.strip()]
    except urllib.error.HTTPError as err:
        return err.code, [err.read().decode()]


def test_the_result_file_holds_every_record_and_the_cli_saves_it(
    rest: Rest, stack: dict[str, Any], cat_jpeg: bytes, coffee_jpeg: bytes, tmp_path: Path
) -> None:
    job = create_job(rest, [cat_jpeg, b"this is not an image", coffee_jpeg])
    wait_finished(rest, job["name"])

    status, lines = results_over_rest(stack, job["name"])
    assert status == 200, lines
    results = [json.loads(line) for line in lines]
    status, listing = rest.get(f"/v1/{job['name']}/items")
    assert status == 200, listing
    records = [item["prediction"] for item in listing["items"]]
    assert [r["index"] for r in results] == [0, 1, 2]
    for result, record in zip(results, records, strict=True):
        assert result["prediction"] == record["name"]
        assert result["input"] == f"inputs[{record['item_index']}]"
        assert result["state"] == record["state"]
        assert as_float32(result["classes"]) == as_float32(record["classes"])
        assert result.get("error") == record.get("error")
    assert results[0]["classes"] and results[1]["error"]["code"] == 3

    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [
            FERRY,
            "--target",
            stack["grpc_target"],
            "--api-key",
            API_KEY,
            "results",
            job["name"],
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    saved = [json.loads(line) for line in out.read_text().splitlines()]
    # The same objects; the text differs only in key order and in float digits (Envoy prints a
    # float32 with 9 significant digits, Python the shortest that reads back the same float32).
    assert as_float32(saved) == as_float32(results)


def test_results_of_an_unknown_job_are_not_found(stack: dict[str, Any]) -> None:
    status, body = results_over_rest(stack, "jobs/00000000-0000-4000-8000-000000000000")
    assert status == 404, body


def _reason(error: dict[str, Any]) -> str:
    return next(d["reason"] for d in error.get("details", []) if "reason" in d)
