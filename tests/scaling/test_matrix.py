"""The scale-out matrix: several processes of every part on a 3-node NATS cluster, hurt under load.

Like the fault matrix (tests/faults), each case counts what clients saw and what Postgres holds;
docs/scaling.md has the figures. One stack serves every case, in order.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from contextlib import AsyncExitStack

import pytest

from devstack.stack import JOB_QUEUE
from services.common import messaging
from tests.e2e.rest import Rest
from tests.faults.harness import FaultStack, Figures, Report, SteadyLoad, eventually
from tests.faults.test_matrix import assert_job_complete, assert_load_recorded
from tests.scaling.metrics import counter

pytestmark = pytest.mark.faults

PREDICTS = "ferry_grpc_requests_total"
MIN_SHARE = 0.20  # of calls a third inference replica serves once added
ADDED_WITHIN_S = 15.0


def work_stream_leader(stack: FaultStack) -> str:
    """The node (``nats-1``) leading the work queue's stream: the worst one to lose mid-job."""

    async def ask() -> str:
        async with AsyncExitStack() as exits:
            _, js = await messaging.connect(stack.endpoints["nats_url"], "scaling-test", exits)
            info = await js.stream_info(messaging.WORK_STREAM)
            assert info.cluster is not None and info.cluster.leader, info
            return f"nats-{info.cluster.leader.rsplit('-', 1)[1]}"

    return asyncio.run(ask())


def metrics_port(stack: FaultStack, name: str) -> int:
    return int(stack.endpoints["services"][name]["metrics_port"])


def predicts(stack: FaultStack, name: str) -> float:
    return counter(metrics_port(stack, name), PREDICTS, method_has="Predict", code="OK")


def test_1_nats_node_killed_mid_job_under_sync_load(
    scaled_stack: FaultStack, photos: list[bytes], scaling_report: Report
) -> None:
    leader = work_stream_leader(scaled_stack)
    figures = Figures(
        "1", f"kill -9 of {leader} (the work stream's leader) of 3, mid-job and under sync load"
    )
    total = 40
    rows_before = scaled_stack.sync_row_count()
    with SteadyLoad(scaled_stack.rest, photos[1]) as load:
        job = scaled_stack.create_job(photos, total)
        scaled_stack.wait_done_items(job, 5)
        figures.recovery_s = scaled_stack.hurt(leader, signal.SIGKILL)
        time.sleep(3)
    # A sync answer is 200 (recorded) or 503 (not recorded); nothing else.
    assert_load_recorded(scaled_stack, load, figures, rows_before, allowed={503})
    assert_job_complete(scaled_stack, job, total, figures)
    scaling_report.add(figures)


def test_2_inference_replica_added_under_load_gets_its_share(
    scaled_stack: FaultStack, photos: list[bytes], scaling_report: Report
) -> None:
    figures = Figures("2", "a third inference replica added under steady sync load")
    scaled_stack.ferry("stop", "inference-2")
    rows_before = scaled_stack.sync_row_count()
    names = ["inference-0", "inference-1", "inference-2"]
    with SteadyLoad(scaled_stack.rest, photos[0], clients=4) as load:
        time.sleep(2)
        scaled_stack.ferry("start", "inference-2")  # returns once it serves
        added = time.monotonic()
        before = {name: predicts(scaled_stack, name) for name in names}
        share = 0.0

        def served_its_share() -> bool:
            nonlocal share
            now = {name: predicts(scaled_stack, name) for name in names}
            calls = sum(now.values()) - sum(before.values())
            share = (now["inference-2"] - before["inference-2"]) / calls if calls >= 20 else 0.0
            return share >= MIN_SHARE

        eventually(served_its_share, f"inference-2 serving {MIN_SHARE:.0%} of calls", ADDED_WITHIN_S)
        figures.recovery_s = time.monotonic() - added
        figures.notes["share"] = round(share, 3)
    assert_load_recorded(scaled_stack, load, figures, rows_before, allowed=set())
    scaling_report.add(figures)


def test_3_inference_replica_then_gateway_stopped_under_load_fails_nothing(
    scaled_stack: FaultStack, photos: list[bytes], scaling_report: Report
) -> None:
    figures = Figures("3", "one of 3 inference replicas, then one of 2 gateways stopped (SIGTERM) under load")
    rows_before = scaled_stack.sync_row_count()
    try:
        with SteadyLoad(scaled_stack.rest, photos[0], clients=4) as load:
            time.sleep(2)
            started = time.monotonic()
            scaled_stack.ferry("stop", "inference-1")
            time.sleep(2)
            scaled_stack.ferry("stop", "gateway-1")
            figures.recovery_s = time.monotonic() - started
            time.sleep(3)
    finally:  # the next cases need them back, whatever happened here
        scaled_stack.ferry("start", "inference-1", check=False)
        scaled_stack.ferry("start", "gateway-1", check=False)
    assert_load_recorded(scaled_stack, load, figures, rows_before, allowed=set())
    scaling_report.add(figures)


def test_5_two_runners_and_two_stores_each_item_and_record_once(
    scaled_stack: FaultStack, photos: list[bytes], scaling_report: Report
) -> None:
    figures = Figures("5", "two runners on one job, two stores ingesting one stream")
    runners, stores = ["jobs-0", "jobs-1"], ["store-0", "store-1"]

    def ran(name: str) -> float:
        return counter(metrics_port(scaled_stack, name), "ferry_jobs_items_total", outcome="succeeded")

    items_before = {n: ran(n) for n in runners}
    inserted_before = {
        n: counter(metrics_port(scaled_stack, n), "ferry_store_records_total", outcome="inserted")
        for n in stores
    }
    total = 60
    job = scaled_stack.create_job(photos, total)
    assert_job_complete(scaled_stack, job, total, figures)
    runs = {n: ran(n) - items_before[n] for n in runners}
    inserts = {
        n: counter(metrics_port(scaled_stack, n), "ferry_store_records_total", outcome="inserted")
        - inserted_before[n]
        for n in stores
    }
    figures.notes |= {"items_per_runner": runs, "records_per_store": inserts}
    assert all(n > 0 for n in runs.values()), f"both runners took items: {runs}"
    assert sum(runs.values()) == total, f"each item run once, by one runner: {runs}"
    assert all(n > 0 for n in inserts.values()), f"both stores ingested records: {inserts}"

    # The job queue's two processes serve the API apart from the runners: the gateways'
    # CreateJobs go round robin to both, and none to a runner.
    def submitted(name: str) -> float:
        port = metrics_port(scaled_stack, name)
        return counter(port, "ferry_grpc_requests_total", "JobQueueService/SubmitJob", code="OK")

    queues = [f"{JOB_QUEUE}-0", f"{JOB_QUEUE}-1"]
    submits_before = {n: submitted(n) for n in queues + runners}
    small = [scaled_stack.create_job(photos, 1) for _ in range(8)]
    submits = {n: submitted(n) - submits_before[n] for n in queues + runners}
    figures.notes["submits_per_queue"] = submits
    assert all(submits[n] == 0 for n in runners), submits
    submits = {n: submits[n] for n in queues}
    assert sum(submits.values()) == len(small) and all(n > 0 for n in submits.values()), submits
    for name in small:
        assert_job_complete(scaled_stack, name, 1, Figures("5", "small jobs"))
    scaling_report.add(figures)


KEY_RATE = 20.0  # calls/s the key is limited to, across every gateway
WARM_S, MEASURE_S = 3.0, 8.0


def admitted_rate(rest: Rest, clients: int = 6) -> tuple[float, int, int]:
    """Calls/s admitted to ``rest``'s key while ``clients`` call as fast as they can: (rate, ok, 429s).

    Counts only answers within ``MEASURE_S`` after ``WARM_S``, so the burst saved up before is spent.
    """
    stop = threading.Event()
    answers: list[tuple[float, int]] = []
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            status, _ = rest.get("/v1/models")
            with lock:
                answers.append((time.monotonic(), status))

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(WARM_S + MEASURE_S)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    window = [s for t, s in answers if started + WARM_S <= t < started + WARM_S + MEASURE_S]
    ok, refused = window.count(200), window.count(429)
    assert ok + refused == len(window), f"only 200 or 429 expected: {sorted(set(window))}"
    return ok / MEASURE_S, ok, refused


def test_4_a_keys_limit_holds_across_two_then_three_gateways(
    scaled_stack: FaultStack, scaling_report: Report
) -> None:
    figures = Figures("4", f"a key limited to {KEY_RATE:g}/s called flat out through 2, then 3 gateways")
    status, created = scaled_stack.rest.post(
        "/v1/keys",
        {"tenant": "limited", "scopes": ["read"], "rate_per_s": KEY_RATE, "burst": int(KEY_RATE)},
    )
    assert status == 200, created
    rest = Rest(scaled_stack.endpoints["http_url"], created["api_key"])
    two, ok2, refused2 = admitted_rate(rest)
    started = time.monotonic()
    scaled_stack.ferry("start", "gateway-2")
    figures.recovery_s = time.monotonic() - started
    time.sleep(2)  # its heartbeats reach the others within a second
    three, ok3, refused3 = admitted_rate(rest)
    figures.requests = ok2 + refused2 + ok3 + refused3
    figures.requests_ok = ok2 + ok3
    figures.requests_retryable = refused2 + refused3
    figures.notes |= {
        "admitted_per_s_2_gateways": round(two, 1),
        "admitted_per_s_3_gateways": round(three, 1),
    }
    scaling_report.add(figures)
    for rate in (two, three):
        assert abs(rate - KEY_RATE) <= 0.1 * KEY_RATE, figures.notes
