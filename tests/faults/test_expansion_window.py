"""An expansion that resumes after its streams' duplicate window has passed queues the first chunk's
items again, and still records and reports every item exactly once.

In production the window is 10 minutes: only a jobs service down that long mid-expansion gets
here. The stack of this module shrinks the window to 1 s (``FERRY_<SVC>_NATS_DUPLICATE_WINDOW_S``)
so that the expansion request redelivered after its 5 s ack wait is past it, as it would be after
a 10-minute outage; JetStream then stores the republished items as new messages, the runners run
them a second time, and what must hold is that store keeps one row per item and the job's counts,
state and result file count each item once.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from services.common import messaging
from tests.faults.conftest import API_KEY, running_fault_stack
from tests.faults.harness import FaultStack, Figures
from tests.faults.test_expansion import expand_and_kill_after_first_chunk
from tests.faults.test_matrix import assert_job_complete

pytestmark = pytest.mark.faults

WINDOW = {f"FERRY_{svc}_NATS_DUPLICATE_WINDOW_S": "1" for svc in ("GATEWAY", "JOBS", "STORE")}


@pytest.fixture(scope="module")
def short_window_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A fault stack whose streams remember message ids for 1 s, serving efficientnet-lite0 only."""
    env = {**WINDOW, "FERRY_INFERENCE_MODELS": "efficientnet-lite0"}
    with running_fault_stack(Path(tmp_path_factory.mktemp("shortwindow")), env) as stack:
        yield stack


async def _work_stream(nats_url: str) -> tuple[int, float]:
    """The work stream's last sequence (messages ever stored) and its duplicate window in seconds."""
    async with asyncio.timeout(30):
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().stream_info(messaging.WORK_STREAM)
        finally:
            await nc.close()
    return int(info.state.last_seq), float(info.config.duplicate_window or 0)


def _result_indexes(stack: FaultStack, job: str) -> list[int]:
    request = urllib.request.Request(
        f"{stack.endpoints['http_url']}/v1/{job}/results", headers={"authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200
        lines = [line for line in answer.read().decode().splitlines() if line.strip()]
    return [int(json.loads(line)["index"]) for line in lines]


def test_an_expansion_resumed_past_the_duplicate_window_records_each_item_once(
    short_window_stack: FaultStack, photos: list[bytes]
) -> None:
    stack = short_window_stack
    total, chunk = 180, 50
    before, window = asyncio.run(_work_stream(stack.endpoints["nats_url"]))
    assert window == 1.0, "the services did not set the shortened duplicate window"

    job, _ = expand_and_kill_after_first_chunk(stack, photos, total)
    figures = Figures("9b", "expansion resumed after the duplicate window")
    assert_job_complete(stack, job, total, figures)
    after, _ = asyncio.run(_work_stream(stack.endpoints["nats_url"]))
    queued = after - before
    print(f"\n{queued} work messages stored for {total} items; rows once each; {figures}")
    # The window had passed: the first chunk was stored (and run) twice. Without this the test
    # would prove nothing about what happens past the window.
    assert queued >= total + chunk, f"only {queued} work messages: the republished chunk was deduplicated"
    assert (figures.lost, figures.duplicated) == (0, 0)
    job_id = job.removeprefix("jobs/")
    counted = stack.query(
        "SELECT items_total, items_succeeded, items_failed FROM jobs WHERE id = $1::uuid", job_id
    )
    assert [tuple(row) for row in counted] == [(total, total, 0)]
    assert sorted(_result_indexes(stack, job)) == list(range(total))
