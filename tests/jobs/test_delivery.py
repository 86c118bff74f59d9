"""The runner's delivery semantics on real JetStream: one record per item, retries, give-up, skips.

Inference here is a failure-injection double (tests/jobs/doubles.py); the real model runs in
tests/e2e.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import grpc
import pytest
from google.rpc import error_details_pb2
from nats.js.errors import NotFoundError
from opentelemetry import trace

from ferry.events.v1 import events_pb2
from ferry.predictions.v1 import prediction_pb2
from services.common import messaging
from services.common.ids import item_record_id
from services.common.messaging import open_cancelled_bucket
from tests.jobs.conftest import Harness
from tests.jobs.doubles import MISSING_MODEL, NOT_AN_IMAGE, FailureInjectingInference

SUCCEEDED = prediction_pb2.PREDICTION_STATE_SUCCEEDED
FAILED = prediction_pb2.PREDICTION_STATE_FAILED


def name_of(job_id: uuid.UUID, index: int) -> str:
    return f"predictions/{item_record_id(job_id, index)}"


def by_name(records: list[prediction_pb2.Prediction]) -> dict[str, prediction_pb2.Prediction]:
    counts = Counter(r.name for r in records)
    assert all(n == 1 for n in counts.values()), f"duplicate records: {counts}"
    return {r.name: r for r in records}


def error_info(record: prediction_pb2.Prediction) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert record.error.details and record.error.details[0].Unpack(info)
    return info


def error_reason(record: prediction_pb2.Prediction) -> str:
    return error_info(record).reason


def error_metadata(record: prediction_pb2.Prediction) -> dict[str, str]:
    return dict(error_info(record).metadata)


async def assert_dead_letter(
    harness: Harness, job_id: uuid.UUID, index: int, content: bytes, reason: str, generation: int = 0
) -> None:
    """The item's dead letter holds the item itself, its input included, and why it failed."""
    dead = await harness.dead_letter(job_id, index)
    item = events_pb2.JobItem.FromString(dead.data or b"")
    assert (item.job_id, item.item_index, item.generation) == (str(job_id), index, generation)
    assert item.input.image.content == content
    assert dead.headers is not None
    assert dead.headers["Ferry-Error-Reason"] == reason
    assert dead.headers["Nats-Msg-Id"] == messaging.with_generation(f"{job_id}:{index}:dead", generation)


async def test_each_item_gets_exactly_one_record_in_the_jobs_trace(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    job = uuid.uuid4()
    with trace.get_tracer("test").start_as_current_span("test.create_job") as span:
        for i in range(5):
            await harness.publish_item(job, i, f"item-{i}".encode())
    trace_id = span.get_span_context().trace_id

    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(job))
    assert set(records) == {name_of(job, i) for i in range(5)}
    for i in range(5):
        record = records[name_of(job, i)]
        assert record.state == SUCCEEDED
        assert record.classes[0].label == f"item-{i}"  # each result went to its own item
        assert (record.job, record.item_index, record.model) == (
            f"jobs/{job}",
            i,
            "models/efficientnet-lite0",
        )
        assert record.trace_id == format(trace_id, "032x")
        assert record.create_time.seconds > 0
    # Fetched together, the job's items went to inference as one request, inside the job's trace.
    assert [(len(c.contents), c.trace_id) for c in inference.calls] == [(5, trace_id)]


async def test_redelivered_item_lands_on_the_same_record(harness: Harness) -> None:
    job = uuid.uuid4()
    await harness.publish_item(job, 0, b"first")
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())
    # The same item again as a new work message: what a crash between publish and ack produces.
    await harness.publish_item(job, 0, b"first", msg_id=f"{job}:0:again")
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(job))
    assert list(records) == [name_of(job, 0)]


async def test_transient_failures_are_retried_then_succeed(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    inference.fail_next = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    job = uuid.uuid4()
    for i in range(3):
        await harness.publish_item(job, i, f"retry-{i}".encode())
    await harness.start_runner()
    info = await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(job))
    assert set(records) == {name_of(job, i) for i in range(3)}
    assert all(r.state == SUCCEEDED for r in records.values())
    # All three failed together once; redeliveries may split them, so later counts vary.
    assert len(inference.calls[0].contents) == 3
    assert len(inference.calls) >= 3
    assert all(inference.seen(f"retry-{i}".encode()) >= 2 for i in range(3))
    assert info.num_redelivered == 0  # everything was finally acked


async def test_persistent_failure_gives_a_failed_record_and_a_dead_letter_once_the_budget_is_spent(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    inference.fail_always = grpc.StatusCode.UNAVAILABLE
    harness.configure(retry_budget_s=0.2)
    job = uuid.uuid4()
    for i in range(2):
        await harness.publish_item(job, i, f"down-{i}".encode())
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(job))
    assert set(records) == {name_of(job, 0), name_of(job, 1)}
    for i in range(2):
        record = records[name_of(job, i)]
        assert record.state == FAILED
        assert record.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        attempts = inference.seen(f"down-{i}".encode())
        assert f"gave up after retrying for 0.2s ({attempts} attempts)" in record.error.message
        assert "injected UNAVAILABLE" in record.error.message
        assert error_reason(record) == "RETRIES_EXHAUSTED"
        assert error_metadata(record)["attempts"] == str(attempts)
        await assert_dead_letter(harness, job, i, f"down-{i}".encode(), "RETRIES_EXHAUSTED")


async def test_permanent_errors_fail_at_once_and_alone(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    mixed, unknown_model, bad_top_k = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await harness.publish_item(mixed, 0, b"fine")
    await harness.publish_item(mixed, 1, NOT_AN_IMAGE)
    await harness.publish_item(unknown_model, 0, b"nowhere", model=MISSING_MODEL)
    await harness.publish_item(bad_top_k, 0, b"k-0", top_k=500)
    await harness.publish_item(bad_top_k, 1, b"k-1", top_k=500)
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(mixed, unknown_model, bad_top_k))
    assert records[name_of(mixed, 0)].state == SUCCEEDED
    bad_input = records[name_of(mixed, 1)]
    assert bad_input.state == FAILED
    assert bad_input.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error_reason(bad_input) == "INVALID_IMAGE"
    assert bad_input.error.message == "item 1 is not an image"  # its own index, not the call's
    missing = records[name_of(unknown_model, 0)]
    assert missing.state == FAILED
    assert missing.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert error_reason(missing) == "MODEL_NOT_FOUND"  # inference's ErrorInfo survives
    for i in range(2):
        assert records[name_of(bad_top_k, i)].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # No retries for permanent errors; a request rejected as a whole is retried item by item once.
    assert inference.seen(NOT_AN_IMAGE) == 1
    assert inference.seen(b"nowhere") == 1
    assert [inference.seen(b"k-0"), inference.seen(b"k-1")] == [2, 2]
    # Each failed item left a dead letter with its input for RetryJob; the success left none.
    await assert_dead_letter(harness, mixed, 1, NOT_AN_IMAGE, "INVALID_IMAGE")
    await assert_dead_letter(harness, unknown_model, 0, b"nowhere", "MODEL_NOT_FOUND")
    await assert_dead_letter(harness, bad_top_k, 1, b"k-1", "INFERENCE_ERROR")
    with pytest.raises(NotFoundError):
        await harness.dead_letter(mixed, 0)


async def test_cancelled_jobs_items_are_skipped(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    cancelled, live = uuid.uuid4(), uuid.uuid4()
    bucket = await open_cancelled_bucket(harness.js)
    await bucket.put(str(cancelled), b"1")
    for i in range(3):
        await harness.publish_item(cancelled, i, f"cancelled-{i}".encode())
    await harness.publish_item(live, 0, b"live")
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    assert list(by_name(await harness.records(cancelled, live))) == [name_of(live, 0)]
    assert all(inference.seen(f"cancelled-{i}".encode()) == 0 for i in range(3))


async def test_malformed_messages_are_terminated(harness: Harness) -> None:
    job = uuid.uuid4()
    garbage = await harness.publish_raw(b"\xff\xff\xff not a protobuf")
    no_uuid = await harness.publish_raw(
        events_pb2.JobItem(job_id="not-a-uuid", model="m").SerializeToString()
    )
    await harness.publish_item(job, 0, b"after the garbage")
    await harness.start_runner()
    info = await harness.wait_drained(await harness.work_stream_last_seq())

    assert list(by_name(await harness.records(job))) == [name_of(job, 0)]
    assert info.num_redelivered == 0
    for seq in (garbage, no_uuid):  # terminated, so gone from the work queue
        with pytest.raises(NotFoundError):
            await harness.js.get_msg(messaging.WORK_STREAM, seq)


async def test_runners_share_one_durable_consumer(harness: Harness) -> None:
    job = uuid.uuid4()
    await harness.start_runner()
    await harness.start_runner()
    for i in range(12):
        await harness.publish_item(job, i, f"shared-{i}".encode())
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(job))
    assert set(records) == {name_of(job, i) for i in range(12)}


async def test_stopping_hands_in_flight_items_back(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    inference.hold = asyncio.Event()  # inference never answers the first runner
    # Without the nak on shutdown the item would come back only after this ack wait.
    harness.configure(ack_wait_s=600.0)
    job = uuid.uuid4()
    await harness.publish_item(job, 0, b"interrupted")
    await harness.start_runner()
    await asyncio.wait_for(inference.called.wait(), 30)
    await harness.stop_runners()

    inference.hold.set()
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())
    records = by_name(await harness.records(job))
    assert records[name_of(job, 0)].state == SUCCEEDED
