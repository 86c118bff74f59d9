"""Builders of the events and jobs the store tests feed in, and bounded waits for their effects."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from nats.js import JetStreamContext

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common.errors import status_to_proto
from services.common.ids import item_record_id, uuid7
from services.common.messaging import PREDICTIONS_SUBJECT


def prediction(
    job: uuid.UUID | None = None,
    index: int = 0,
    failed: bool = False,
    why: tuple[grpc.StatusCode, str, str] = (
        grpc.StatusCode.INVALID_ARGUMENT,
        "not an image",
        "INVALID_IMAGE",
    ),
) -> prediction_pb2.Prediction:
    """A recorded prediction: a sync one, or item ``index`` of ``job``; ``why`` it failed if it did."""
    record_id = item_record_id(job, index) if job else uuid7()
    made = prediction_pb2.Prediction(
        name=f"predictions/{record_id}",
        model="models/efficientnet-lite0",
        state=prediction_pb2.PREDICTION_STATE_FAILED if failed else prediction_pb2.PREDICTION_STATE_SUCCEEDED,
        trace_id="ab" * 16,
    )
    if failed:
        made.error.CopyFrom(status_to_proto(*why))
    else:
        made.classes.append(types_pb2.ClassScore(label="espresso", score=0.95, index=967))
        made.timing.CopyFrom(types_pb2.Timing(inference_ms=12.5, batch_size=2))
    if job:
        made.job, made.item_index = f"jobs/{job}", index
    made.create_time.FromMicroseconds(time.time_ns() // 1000)  # Postgres keeps microseconds
    return made


def event(tenant: str, made: prediction_pb2.Prediction, generation: int = 0) -> events_pb2.PredictionRecorded:
    return events_pb2.PredictionRecorded(tenant=tenant, prediction=made, generation=generation)


def queued_job(items: int, job_id: uuid.UUID | None = None) -> job_pb2.Job:
    return job_pb2.Job(
        name=f"jobs/{job_id or uuid7()}",
        model="models/efficientnet-lite0",
        state=job_pb2.JOB_STATE_QUEUED,
        items_total=items,
        top_k=5,
    )


T = TypeVar("T")
WAIT_S = 20.0


async def create_job(store: store_service_pb2_grpc.StoreServiceStub, tenant: str, items: int) -> uuid.UUID:
    """Records a queued job of ``items`` items for ``tenant`` through store's API; returns its id."""
    answer = await store.CreateJob(store_service_pb2.CreateJobRequest(tenant=tenant, job=queued_job(items)))
    return uuid.UUID(answer.job.name.removeprefix("jobs/"))


async def publish(
    js: JetStreamContext, tenant: str, made: prediction_pb2.Prediction, msg_id: str, generation: int = 0
) -> None:
    """Publishes a PredictionRecorded exactly as gateway and jobs do, with its own Nats-Msg-Id."""
    data = event(tenant, made, generation).SerializeToString()
    await js.publish(PREDICTIONS_SUBJECT, data, headers={"Nats-Msg-Id": msg_id})


def record_id(made: prediction_pb2.Prediction) -> uuid.UUID:
    return uuid.UUID(made.name.removeprefix("predictions/"))


async def eventually(probe: Callable[[], Awaitable[T] | T], done: Callable[[T], bool]) -> T:
    """Polls ``probe`` until ``done`` holds or WAIT_S passes; returns the last value either way."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = probe()
        value: T = await answer if inspect.isawaitable(answer) else answer  # type: ignore[assignment]
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def rows_of(pool: asyncpg.Pool, made: prediction_pb2.Prediction) -> int:
    """How many rows hold this prediction, once at least one does (or the wait ran out)."""
    count = await eventually(
        lambda: pool.fetchval("SELECT count(*) FROM predictions WHERE id = $1", record_id(made)),
        lambda n: bool(n),
    )
    return int(count)


async def error_of(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error an RPC fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a google.rpc.Status."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


async def drained(js: JetStreamContext, pool: asyncpg.Pool, tenant: str) -> None:
    """Returns once everything published so far is ingested: a marker record published last is in."""
    marker = prediction()
    await publish(js, tenant, marker, marker.name)
    assert await rows_of(pool, marker) == 1
