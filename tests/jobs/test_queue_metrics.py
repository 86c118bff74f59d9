"""The queue gauges an autoscaler reads rise under a backlog and fall when it drains (real NATS)."""

from __future__ import annotations

import asyncio
import uuid

from prometheus_client import REGISTRY

from tests.jobs.conftest import Harness
from tests.jobs.doubles import FailureInjectingInference


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_queue_depth_rises_under_a_backlog_and_falls_when_drained(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    inference.hold = asyncio.Event()  # inference answers nothing yet: the backlog builds
    harness.configure(
        subject_filter=f"{harness.subject}.>", max_inflight=2, fetch_batch=1, queue_metrics_s=0.05
    )
    await harness.start_runner()
    job = uuid.uuid4()
    latency_before = sample("ferry_jobs_item_latency_seconds_count", priority="low")
    for i in range(20):
        await harness.publish_item(
            job, i, f"item-{i}".encode(), subject=f"{harness.subject}.low", model="m-queue"
        )

    async def backlog_seen() -> bool:
        return sample("ferry_jobs_consumer_lag", priority="low") == 20 and (
            sample("ferry_jobs_queue_depth", priority="low") >= 18
        )

    await harness.wait_until(backlog_seen, "a backlog of 20 in the gauges")
    assert sample("ferry_jobs_queue_ack_pending", priority="low") <= 2  # max_inflight
    assert sample("ferry_jobs_queue_depth", priority="high") == 0

    inference.hold.set()

    async def drained() -> bool:
        return sample("ferry_jobs_consumer_lag", priority="low") == 0 and (
            sample("ferry_jobs_queue_depth", priority="low") == 0
        )

    await harness.wait_until(drained, "the gauges back at 0")
    assert sample("ferry_jobs_items_total", outcome="succeeded", model="m-queue") == 20
    assert sample("ferry_jobs_item_latency_seconds_count", priority="low") - latency_before == 20
