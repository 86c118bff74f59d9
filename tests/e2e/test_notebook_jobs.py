"""Run-notebook jobs on the whole local stack: the CLI and REST through Envoy, as a user tries them."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.rest import Rest
from tests.e2e.stack import FERRY
from tests.e2e.test_jobs import wait_finished

pytestmark = pytest.mark.e2e


def ferry(stack: dict[str, Any], *args: str) -> str:
    done = subprocess.run(
        [FERRY, "--target", stack["grpc_target"], "--api-key", API_KEY, *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def notebook_over_rest(stack: dict[str, Any], name: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        f"{stack['http_url']}/v1/{name}/notebook", headers={"authorization": f"Bearer {API_KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.headers.get("content-type", ""), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def test_the_cli_runs_a_notebook_with_parameters_and_saves_it(stack: dict[str, Any], tmp_path: Path) -> None:
    job = json.loads(
        ferry(stack, "job", "--notebook", "report", "--param", "count=3", "--param", "text=cli", "--wait")
    )
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert (job["items_total"], job["items_succeeded"]) == (4, 4)

    out = tmp_path / "executed.ipynb"
    ferry(stack, "notebook", job["name"], "-o", str(out))
    assert "3 words: cli-0, cli-1, cli-2; sum of squares 5" in out.read_text()


def test_a_failing_cell_fails_the_job_over_rest(rest: Rest, stack: dict[str, Any]) -> None:
    status, answer = rest.post("/v1/jobs", {"notebook": "report", "parameters": {"count": -1}})
    assert status == 200, answer
    job = wait_finished(rest, answer["job"]["name"])

    assert job["state"] == "JOB_STATE_FAILED", job
    assert "code cell 1 raised ValueError: count must be at least 0, got -1" in job["error"]["message"]
    status, content_type, body = notebook_over_rest(stack, job["name"])
    assert status == 200, body
    assert content_type.startswith("application/x-ipynb+json")
    assert "ValueError" in json.dumps(json.loads(body))


def test_an_unknown_notebook_and_a_model_jobs_notebook_are_refused(rest: Rest) -> None:
    status, answer = rest.post("/v1/jobs", {"notebook": "nope"})
    assert status == 404, answer
    assert "NOTEBOOK_NOT_FOUND" in json.dumps(answer)
