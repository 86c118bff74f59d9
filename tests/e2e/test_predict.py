"""Synchronous predictions over REST through Envoy, and their records in Postgres."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.e2e.rest import Rest, b64

pytestmark = pytest.mark.e2e

PREDICT = "/v1/models/efficientnet-lite0:predict"
FIXTURES = Path(__file__).parents[1] / "fixtures"


def predict(rest: Rest, image: bytes, top_k: int = 5) -> dict[str, Any]:
    status, body = rest.post(PREDICT, {"image": {"content": b64(image)}, "top_k": top_k})
    assert status == 200, body
    return body["prediction"]


def record_count(database_url: str, record_id: uuid.UUID) -> int:
    """How many rows Postgres holds for the prediction ``record_id``, once it has any (0 after 10 s)."""

    async def count() -> int:
        connection = await asyncpg.connect(database_url)
        try:
            for _ in range(100):  # records land a moment after the answer
                n = int(
                    await connection.fetchval("SELECT count(*) FROM predictions WHERE id = $1", record_id)
                )
                if n:
                    return n
                await asyncio.sleep(0.1)
            return 0
        finally:
            await connection.close()

    return asyncio.run(count())


def test_cat_photo_top_label_is_a_cat(rest: Rest, cat_jpeg: bytes) -> None:
    prediction = predict(rest, cat_jpeg)
    classes = prediction["classes"]
    assert len(classes) == 5
    assert classes[0]["index"] in CAT_CLASSES, classes
    assert classes[0]["label"]
    scores = [c["score"] for c in classes]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0001
    assert re.fullmatch(r"predictions/[0-9a-f-]{36}", prediction["name"])
    assert prediction["model"] == "models/efficientnet-lite0"
    assert prediction["state"] == "PREDICTION_STATE_SUCCEEDED"
    timing = prediction["timing"]
    assert timing["inference_ms"] > 0 and timing["total_ms"] >= timing["inference_ms"]
    assert timing["batch_size"] >= 1


def test_a_phones_heic_photo_is_read_upright_and_answered_as_its_jpeg(rest: Rest, cat_jpeg: bytes) -> None:
    # An iPhone's HEIC, stored sideways with its EXIF orientation (tests/fixtures/README.md).
    heic = (FIXTURES / "chelsea-sideways.heic").read_bytes()
    from_heic, from_jpeg = predict(rest, heic, top_k=3), predict(rest, cat_jpeg, top_k=3)
    assert from_heic["classes"][0]["index"] in CAT_CLASSES, from_heic["classes"]
    assert [c["index"] for c in from_heic["classes"]] == [c["index"] for c in from_jpeg["classes"]]


def test_coffee_photo_is_espresso(rest: Rest, coffee_jpeg: bytes) -> None:
    prediction = predict(rest, coffee_jpeg, top_k=3)
    assert len(prediction["classes"]) == 3
    assert prediction["classes"][0]["index"] == ESPRESSO


def test_prediction_is_recorded_in_postgres(rest: Rest, stack: dict[str, Any], cat_jpeg: bytes) -> None:
    made = predict(rest, cat_jpeg)
    status, body = rest.poll(f"/v1/{made['name']}", lambda s, _: s == 200)
    assert status == 200, body
    stored = body["prediction"]
    assert stored["name"] == made["name"]
    assert [c["index"] for c in stored["classes"]] == [c["index"] for c in made["classes"]]
    assert stored["trace_id"] == made["trace_id"] != ""

    async def row() -> asyncpg.Record | None:
        connection = await asyncpg.connect(stack["database_url"])
        try:
            record_id = uuid.UUID(made["name"].removeprefix("predictions/"))
            return await connection.fetchrow("SELECT tenant, model FROM predictions WHERE id = $1", record_id)
        finally:
            await connection.close()

    record = asyncio.run(row())
    assert record is not None
    assert record["tenant"] == "default"


def test_list_predictions_newest_first_and_paged(rest: Rest, cat_jpeg: bytes, coffee_jpeg: bytes) -> None:
    names = [predict(rest, image)["name"] for image in (cat_jpeg, coffee_jpeg, cat_jpeg)]
    # Records reach Postgres asynchronously; wait for the newest one before listing.
    rest.poll(f"/v1/{names[-1]}", lambda s, _: s == 200)
    status, first = rest.get("/v1/predictions?page_size=2")
    assert status == 200, first
    assert [p["name"] for p in first["predictions"]] == [names[2], names[1]]
    assert first["next_page_token"]
    status, second = rest.get(f"/v1/predictions?page_size=2&page_token={first['next_page_token']}")
    assert status == 200, second
    assert second["predictions"][0]["name"] == names[0]


def test_request_id_makes_predict_idempotent(rest: Rest, stack: dict[str, Any], cat_jpeg: bytes) -> None:
    body = {"image": {"content": b64(cat_jpeg)}, "request_id": f"client-retry-{uuid.uuid4()}"}
    answers = [rest.post(PREDICT, body) for _ in range(2)]  # the second is a client's retry
    assert [status for status, _ in answers] == [200, 200], answers
    first, second = (answer["prediction"] for _, answer in answers)
    assert first["name"] == second["name"]
    assert first["classes"][0]["index"] == second["classes"][0]["index"]
    prediction_id = uuid.UUID(first["name"].removeprefix("predictions/"))
    assert record_count(stack["database_url"], prediction_id) == 1


def test_ids_without_request_id_sort_by_time(rest: Rest, cat_jpeg: bytes) -> None:
    first, second = predict(rest, cat_jpeg), predict(rest, cat_jpeg)
    ids = [uuid.UUID(p["name"].removeprefix("predictions/")) for p in (first, second)]
    assert [i.version for i in ids] == [7, 7]  # UUIDv7 of when Envoy got each request
    assert ids[0] < ids[1]
