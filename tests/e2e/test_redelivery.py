"""A redelivered record event (same record, new message) never makes a second Postgres row."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import nats
import pytest

from ferry.events.v1 import events_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common.ids import uuid7
from services.common.messaging import EVENTS_STREAM, PREDICTIONS_SUBJECT
from services.store.ingest import RECORDS_FILTER
from tests.e2e.rest import Rest

pytestmark = pytest.mark.e2e


async def publish_twice(nats_url: str, event: events_pb2.PredictionRecorded, record_id: str) -> int:
    """Publishes the same record as two distinct messages; returns the second's stream sequence."""
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        payload = event.SerializeToString()
        await js.publish(PREDICTIONS_SUBJECT, payload, headers={"Nats-Msg-Id": f"first-{record_id}"})
        second = await js.publish(PREDICTIONS_SUBJECT, payload, headers={"Nats-Msg-Id": f"again-{record_id}"})
        return int(second.seq)
    finally:
        await connection.close()


async def store_has_acked(nats_url: str, sequence: int, timeout_s: float = 30) -> bool:
    """Waits until every consumer of the records (store's ingest) has acknowledged ``sequence``.

    Consumers of the stream's other subjects (store's job events) never see it, so their ack
    floor need not reach it.
    """
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            consumers = [
                c for c in await js.consumers_info(EVENTS_STREAM) if c.config.filter_subject == RECORDS_FILTER
            ]
            if consumers and all(c.ack_floor.stream_seq >= sequence for c in consumers):
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await connection.close()


async def count_rows(database_url: str, record_id: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(
            await connection.fetchval("SELECT count(*) FROM predictions WHERE id = $1::uuid", record_id)
        )
    finally:
        await connection.close()


def test_redelivered_record_is_stored_once(rest: Rest, stack: dict[str, Any]) -> None:
    record_id = str(uuid7())
    prediction = prediction_pb2.Prediction(
        name=f"predictions/{record_id}",
        model="models/efficientnet-lite0",
        state=prediction_pb2.PREDICTION_STATE_SUCCEEDED,
        classes=[types_pb2.ClassScore(label="espresso", score=0.9, index=967)],
    )
    prediction.create_time.GetCurrentTime()
    event = events_pb2.PredictionRecorded(tenant="default", prediction=prediction)

    second_sequence = asyncio.run(publish_twice(stack["nats_url"], event, record_id))
    assert asyncio.run(store_has_acked(stack["nats_url"], second_sequence))
    assert asyncio.run(count_rows(stack["database_url"], record_id)) == 1
    status, body = rest.get(f"/v1/predictions/{record_id}")
    assert status == 200, body
    assert body["prediction"]["classes"][0]["label"] == "espresso"
