"""Jobs of every input kind a Predict takes, on the whole stack: texts on minilm (embeddings and
zero-shot classes), JSON payloads on the notebook model ``agree``, a manifest of texts through the
CLI, and the refusals (a bad input at CreateJob, a kind the model cannot take per item)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY
from tests.e2e.test_jobs import wait_finished
from tests.e2e.test_keys import ferry_cli
from tests.e2e.test_uploads import ferry

pytestmark = pytest.mark.e2e

CAT = "a cat sleeping on a sofa"


def create(rest: Rest, model: str, inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    status, answer = rest.post("/v1/jobs", {"model": model, "inputs": inputs, **extra})
    assert status == 200, answer
    job: dict[str, Any] = answer["job"]
    return job


def items(rest: Rest, name: str) -> list[dict[str, Any]]:
    status, listing = rest.get(f"/v1/{name}/items")
    assert status == 200, listing
    return [item["prediction"] for item in listing["items"]]


def stored_outputs(database_url: str, job_name: str) -> list[Any]:
    """The ``outputs`` column of the job's rows in Postgres, in item order."""

    async def fetch() -> list[Any]:
        connection = await asyncpg.connect(database_url)
        try:
            query = "SELECT outputs FROM predictions WHERE job_id = $1 ORDER BY item_index"
            rows = await connection.fetch(query, uuid.UUID(job_name.removeprefix("jobs/")))
            return [json.loads(r["outputs"]) if r["outputs"] else None for r in rows]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def test_a_job_of_texts_records_embeddings_and_zero_shot_classes(rest: Rest, stack: dict[str, Any]) -> None:
    job = create(
        rest,
        "models/minilm",
        [
            {"text": {"content": CAT}},
            {"text": {"content": "quarterly tax filing deadline"}},
            {"text": {"content": CAT, "candidate_labels": ["quarterly tax filing", "animal"]}},
        ],
    )
    done = wait_finished(rest, job["name"])
    assert (done["state"], done["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 3), done

    cat, tax, zero_shot = items(rest, job["name"])
    for record in (cat, tax):
        assert len(record["embedding"]) == 384 and not record["classes"]
        assert math.isclose(math.hypot(*record["embedding"]), 1.0, abs_tol=1e-3)
    assert sum(a * b for a, b in zip(cat["embedding"], tax["embedding"], strict=True)) < 0.5
    assert [c["label"] for c in zero_shot["classes"]] == ["animal", "quarterly tax filing"]

    stored = stored_outputs(stack["database_url"], job["name"])
    assert len(stored[0]["embedding"]) == 384 and stored[2] is None  # zero-shot: classes only

    lines = ferry_cli(stack, "results", job["name"])
    assert isinstance(lines, list) and [line["index"] for line in lines] == [0, 1, 2]
    assert lines[0]["embedding"] == pytest.approx(cat["embedding"], abs=1e-6)
    assert lines[2]["classes"][0]["label"] == "animal"


def test_a_job_of_payloads_records_the_notebook_models_json(rest: Rest, coffee_jpeg: bytes) -> None:
    job = create(rest, "agree", [{"payload": {"image": b64(coffee_jpeg)}}])
    done = wait_finished(rest, job["name"])
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    [record] = items(rest, job["name"])
    assert record["output"]["agreed"] is True and record["output"]["label"] == "espresso", record


def test_a_manifest_of_texts_runs_through_the_cli(stack: dict[str, Any], tmp_path: Path) -> None:
    manifest = tmp_path / "texts.jsonl"
    lines = [{"text": CAT}, {"text": CAT, "candidate_labels": ["weather", "animal"]}]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    upload = ferry(stack, "upload", str(manifest))
    assert (upload["kind"], upload["entries"]) == ("jsonl", 2)
    done = ferry(stack, "job", "--manifest", upload["name"], "--model", "minilm", "--wait")
    assert (done["state"], done["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 2), done
    results = ferry_cli(stack, "results", done["name"])
    assert isinstance(results, list)
    assert len(results[0]["embedding"]) == 384
    assert results[1]["classes"][0]["label"] == "animal"


def test_a_bad_input_is_refused_at_create_naming_its_index(rest: Rest) -> None:
    inputs = [{"text": {"content": CAT}}, {"text": {"content": "   "}}]
    status, refused = rest.post("/v1/jobs", {"model": "minilm", "inputs": inputs})
    assert status == 400, refused
    assert refused["message"].startswith("inputs[1].text.content is empty"), refused
    assert "MISSING_TEXT" in json.dumps(refused["details"])


def test_a_kind_the_model_cannot_take_fails_that_item(rest: Rest, cat_jpeg: bytes) -> None:
    job = create(
        rest, "efficientnet-lite0", [{"image": {"content": b64(cat_jpeg)}}, {"text": {"content": CAT}}]
    )
    done = wait_finished(rest, job["name"])
    assert (done["state"], done["items_succeeded"], done["items_failed"]) == (
        "JOB_STATE_PARTIALLY_SUCCEEDED",
        1,
        1,
    )
    failed = items(rest, job["name"])[1]
    assert failed["error"]["code"] == 3  # INVALID_ARGUMENT
    assert failed["error"]["message"].startswith("item 1 "), failed  # its own index in the job
    assert "takes image or tensor" in failed["error"]["message"], failed


def test_a_job_the_model_can_take_none_of_is_refused_at_create(rest: Rest) -> None:
    status, refused = rest.post(
        "/v1/jobs", {"model": "efficientnet-lite0", "inputs": [{"text": {"content": CAT}}] * 3}
    )
    assert status == 400, refused
    assert "takes image or tensor inputs and none of this job's 3 inputs is one" in refused["message"]
    assert "UNSUPPORTED_INPUT" in json.dumps(refused["details"])


def test_a_job_for_an_unknown_model_is_404_naming_the_served_ones_and_records_nothing(rest: Rest) -> None:
    status, before = rest.get("/v1/jobs?page_size=1000")
    assert status == 200, before
    status, refused = rest.post(
        "/v1/jobs", {"model": "no-such-model", "inputs": [{"text": {"content": CAT}}]}
    )
    assert status == 404, refused
    assert "available models" in refused["message"] and "efficientnet-lite0" in refused["message"]
    _, after = rest.get("/v1/jobs?page_size=1000")
    assert len(after.get("jobs", [])) == len(before.get("jobs", []))


def test_the_cli_predicts_and_runs_jobs_of_texts_and_json(
    stack: dict[str, Any], tmp_path: Path, coffee_jpeg: bytes
) -> None:
    embedded = ferry(stack, "predict", "--text", CAT)
    assert embedded["model"] == "models/minilm" and len(embedded["embedding"]) == 384
    ranked = ferry(stack, "predict", "--text", CAT, "--label", "weather", "--label", "animal")
    assert [c["label"] for c in ranked["classes"]] == ["animal", "weather"]
    answer = ferry(stack, "predict", "--model", "agree", "--json", json.dumps({"image": b64(coffee_jpeg)}))
    assert answer["agreed"] is True and answer["label"] == "espresso", answer
    done = ferry(
        stack,
        "job",
        "--text",
        CAT,
        "--text",
        "stock prices fell",
        "--label",
        "animal",
        "--label",
        "finance",
        "--wait",
    )
    assert (done["model"], done["state"], done["items_succeeded"]) == (
        "models/minilm",
        "JOB_STATE_SUCCEEDED",
        2,
    ), done
    results = ferry_cli(stack, "results", done["name"])
    assert isinstance(results, list)
    assert [r["classes"][0]["label"] for r in results] == ["animal", "finance"]


def test_the_cli_refuses_a_predict_of_two_inputs_or_labels_without_a_text(stack: dict[str, Any]) -> None:
    env = {**os.environ, "FERRY_API_KEY": API_KEY, "FERRY_TARGET": stack["grpc_target"]}
    for args in (["predict", "--text", "a", "--text", "b"], ["job", "--label", "animal"], ["predict"]):
        done = subprocess.run([FERRY, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stdout)
        assert "--text" in done.stderr or "one input" in done.stderr, done.stderr
