"""The runner rides out outages: retries by time, pauses while inference is down, keeps slow items.

Inference here is the failure-injection double (tests/jobs/doubles.py), stopped and restarted on
its port where a test needs inference to go away.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from nats.js.errors import NotFoundError

from services.common import messaging
from services.jobs.records import record_id
from tests.jobs.conftest import Harness
from tests.jobs.doubles import FailureInjectingInference
from tests.jobs.test_delivery import FAILED, SUCCEEDED, assert_dead_letter, by_name, name_of

# Deliveries main's runner allowed before it gave up (its max_deliver); retries must go past it.
OLD_ATTEMPT_LIMIT = 5


async def test_retries_outlast_the_old_attempt_limit_then_succeed(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    # Inference answers UNAVAILABLE (health still SERVING, so the runner keeps trying): what a
    # replica that is restarting behind a load balancer looks like.
    inference.fail_always = grpc.StatusCode.UNAVAILABLE
    job = uuid.uuid4()
    for i in range(3):
        await harness.publish_item(job, i, f"later-{i}".encode())
    await harness.start_runner()

    async def past_the_old_limit() -> bool:
        return all(inference.seen(f"later-{i}".encode()) > 2 * OLD_ATTEMPT_LIMIT for i in range(3))

    await harness.wait_until(past_the_old_limit, "retried past the old attempt limit")
    inference.fail_always = None
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(job))
    assert [records[name_of(job, i)].state for i in range(3)] == [SUCCEEDED] * 3
    with pytest.raises(NotFoundError):
        await harness.dead_letter(job, 0)


async def test_runner_fetches_nothing_while_inference_is_down(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    harness.configure(fetch_timeout_s=0.2)
    await harness.start_runner()
    [readiness] = harness.readiness

    async def serving() -> bool:
        return readiness.serving

    async def not_serving() -> bool:
        return not readiness.serving

    await harness.wait_until(serving, "SERVING with inference up")
    await inference.stop()
    await harness.wait_until(not_serving, "NOT_SERVING with inference down")
    assert "inference" in readiness.reason()
    # A pull already waiting when readiness changed ends within fetch_timeout_s; none follows.
    await asyncio.sleep(1.0)

    job = uuid.uuid4()
    for i in range(3):
        await harness.publish_item(job, i, f"paused-{i}".encode())
    await asyncio.sleep(3.0)  # time enough for many pulls, had the runner not paused
    info = await harness.consumer()
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (3, 0, 0)

    await inference.start()
    await harness.wait_until(serving, "SERVING with inference back")
    await harness.wait_drained(await harness.work_stream_last_seq())
    records = by_name(await harness.records(job))
    assert [records[name_of(job, i)].state for i in range(3)] == [SUCCEEDED] * 3
    # The outage cost no attempts: each item went to inference once.
    assert [inference.seen(f"paused-{i}".encode()) for i in range(3)] == [1, 1, 1]


async def test_a_slow_item_is_not_redelivered_to_another_runner(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    # Inference takes 2.5 ack waits to answer; only the heartbeats keep the item claimed. The ack
    # wait runs from delivery, while a pull still waits out its fetch timeout for a fuller batch
    # before the runner (and its first heartbeat, a third of the ack wait later) sees the item: the
    # ack wait must exceed both together, with room for a loaded machine.
    harness.configure(ack_wait_s=2.0, fetch_timeout_s=0.5, inference_timeout_s=30.0)
    inference.delay_s = 5.0
    await harness.start_runner()
    await harness.start_runner()
    job = uuid.uuid4()
    await harness.publish_item(job, 0, b"slow")
    info = await harness.wait_drained(await harness.work_stream_last_seq())

    assert inference.seen(b"slow") == 1
    assert info.num_redelivered == 0
    assert by_name(await harness.records(job))[name_of(job, 0)].state == SUCCEEDED


async def test_starting_updates_an_existing_consumers_ack_wait(harness: Harness) -> None:
    harness.configure(ack_wait_s=60.0)
    await harness.start_runner()
    await harness.stop_runners()
    assert (await harness.consumer()).config.ack_wait == 60.0

    harness.configure(ack_wait_s=10.0)
    await harness.start_runner()
    assert (await harness.consumer()).config.ack_wait == 10.0


async def test_a_retried_generation_records_again_under_its_own_msg_id(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    # Generation 0 fails for good; RetryJob re-queues it as generation 1, which succeeds.
    inference.fail_next = [grpc.StatusCode.FAILED_PRECONDITION]
    job = uuid.uuid4()
    await harness.publish_item(job, 0, b"twice")
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())
    await assert_dead_letter(harness, job, 0, b"twice", "INFERENCE_ERROR")

    await harness.publish_item(job, 0, b"twice", generation=1)
    await harness.wait_drained(await harness.work_stream_last_seq())

    events = await harness.record_events(job)
    assert [(e.generation, e.prediction.state) for e, _ in events] == [(0, FAILED), (1, SUCCEEDED)]
    assert [headers["Nats-Msg-Id"] for _, headers in events] == [
        record_id(job, 0),
        messaging.with_generation(record_id(job, 0), 1),
    ]
    assert {e.prediction.name for e, _ in events} == {name_of(job, 0)}  # the same row, a new round
