"""Priority lanes against the session's real nats-server: high overtakes a backlog, low still runs."""

from __future__ import annotations

import uuid

from nats.js.api import AckPolicy, ConsumerConfig

from services.common import messaging
from tests.jobs.conftest import Harness
from tests.jobs.doubles import FailureInjectingInference


async def lanes_drained(harness: Harness) -> bool:
    for _, consumer, _ in harness.settings.lanes():
        info = await harness.js.consumer_info(messaging.WORK_STREAM, consumer)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def test_a_high_job_finishes_before_an_earlier_low_job_which_still_finishes(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    inference.delay_s = 0.02  # a slow model, so the backlog lasts
    harness.configure(subject_filter=f"{harness.subject}.>", max_inflight=4, fetch_batch=2)
    low, high = uuid.uuid4(), uuid.uuid4()
    for i in range(40):  # the backlog: a low job, queued first
        await harness.publish_item(low, i, f"low-{i}".encode(), subject=f"{harness.subject}.low")
    for i in range(20):
        await harness.publish_item(high, i, f"high-{i}".encode(), subject=f"{harness.subject}.high")

    await harness.start_runner()
    await harness.wait_until(lambda: lanes_drained(harness), "every lane drained")

    records = await harness.records(low, high)  # in the order the runner stored them
    order = [r.job for r in records]
    assert order.count(f"jobs/{low}") == 40 and order.count(f"jobs/{high}") == 20
    last_high = max(i for i, job in enumerate(order) if job == f"jobs/{high}")
    last_low = max(i for i, job in enumerate(order) if job == f"jobs/{low}")
    assert last_high < last_low
    # Not starved: low items ran while high ones were still waiting.
    assert f"jobs/{low}" in order[:last_high]
    # Inside inference, a caller waiting at the same priority goes before these items.
    assert inference.calls and all(call.job_item for call in inference.calls)


async def test_runners_replace_the_old_consumer_for_all_priorities(harness: Harness) -> None:
    harness.configure(subject_filter=f"{harness.subject}.>")
    old = ConsumerConfig(
        durable_name=harness.settings.consumer_name,
        filter_subject=harness.settings.subject_filter,
        ack_policy=AckPolicy.EXPLICIT,
    )
    await harness.js.add_consumer(messaging.WORK_STREAM, old)
    job = uuid.uuid4()
    await harness.publish_item(job, 0, b"queued before the upgrade", subject=f"{harness.subject}.normal")

    await harness.start_runner()  # a work queue refuses overlapping consumers: the old one must go
    await harness.wait_until(lambda: lanes_drained(harness), "the lanes drained")

    names = [info.name for info in await harness.js.consumers_info(messaging.WORK_STREAM)]
    assert harness.settings.consumer_name not in names
    assert [r.job for r in await harness.records(job)] == [f"jobs/{job}"]
