"""The fault matrix: real processes under ``ferry up``, one fault per case, nothing lost or doubled.

Each case counts what the client saw and what Postgres holds, and asserts: no accepted item or
prediction lost, none duplicated, no item FAILED because of the fault, and the client saw only
successes (or, where the case says so, retryable answers). docs/reliability.md has the figures.
"""

from __future__ import annotations

import signal
import time

import pytest

from devstack.stack import JOB_QUEUE
from services.common.ids import prediction_id_for_request
from tests.e2e.rest import b64
from tests.faults.harness import FaultStack, Figures, Report, SteadyLoad, eventually

pytestmark = pytest.mark.faults

TENANT = "default"  # the dev key's tenant


def assert_job_complete(stack: FaultStack, name: str, total: int, figures: Figures) -> None:
    """The job SUCCEEDED with every item recorded once and none failed."""
    job = stack.wait_finished(name)
    rows = stack.job_rows(name)
    indexes = [row["item_index"] for row in rows]
    figures.items = total
    figures.items_succeeded = int(job["items_succeeded"])
    figures.lost += total - len(set(indexes))
    figures.duplicated += len(indexes) - len(set(indexes))
    failed = [row["item_index"] for row in rows if row["state"] != 1]  # 1: PREDICTION_STATE_SUCCEEDED
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert (job["items_succeeded"], job["items_failed"]) == (total, 0), job
    assert sorted(indexes) == list(range(total)), "every item recorded exactly once"
    assert failed == [], f"items failed because of the fault: {failed}"


def assert_load_recorded(
    stack: FaultStack, load: SteadyLoad, figures: Figures, rows_before: int, allowed: set[int]
) -> None:
    """Every 200 is in Postgres once, no other answer left a record, and only ``allowed`` codes came."""
    figures.count_load(load)
    ok = load.succeeded()
    assert ok, "the load made no successful request at all"
    eventually(lambda: len(stack.sync_rows(ok)) == len(ok), "every answered prediction in Postgres", 90)
    refused = [prediction_id_for_request(TENANT, a.request_id) for a in load.answers if a.status != 200]
    left_behind = stack.sync_rows(refused) if refused else set()
    figures.lost += len(ok) - len(stack.sync_rows(ok))
    figures.duplicated += stack.sync_row_count() - rows_before - len(ok)
    unexpected = {code: n for code, n in load.codes().items() if code not in {200, *allowed}}
    assert unexpected == {}, f"the client saw {unexpected}"
    assert left_behind == set(), f"{len(left_behind)} refused predictions were recorded anyway"
    assert stack.sync_row_count() - rows_before == len(ok), "one record per answered prediction"


def test_1_inference_killed_mid_job_every_item_succeeds(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("1", "inference SIGKILLed mid-job, restarted by the supervisor")
    total = 40
    job = fault_stack.create_job(photos, total)
    fault_stack.wait_done_items(job, 5)
    pid, _ = fault_stack.signal("inference", signal.SIGKILL)
    # A user listing models meanwhile is told the truth, not READY from the gateway's cache.
    eventually(lambda: _model_state(fault_stack) == (False, "MODEL_STATE_UNAVAILABLE"), "not ready listed", 5)
    figures.recovery_s = fault_stack.wait_replaced("inference", pid)
    assert_job_complete(fault_stack, job, total, figures)
    eventually(lambda: _model_state(fault_stack) == (True, "MODEL_STATE_READY"), "READY listed again", 30)
    report.add(figures)


def _model_state(stack: FaultStack) -> tuple[bool, str]:
    """Whether GET /v1/models/efficientnet-lite0 says it is ready, and its state."""
    status, body = stack.rest.get("/v1/models/efficientnet-lite0")
    assert status == 200, body
    return bool(body["model"].get("ready")), str(body["model"]["state"])


def test_2_inference_restarted_under_load_fails_no_request(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("2", "inference SIGTERMed and restarted under steady sync load")
    rows_before = fault_stack.sync_row_count()
    with SteadyLoad(fault_stack.rest, photos[0]) as load:
        time.sleep(2)
        figures.recovery_s = fault_stack.hurt("inference", signal.SIGTERM)
        time.sleep(3)
    assert_load_recorded(fault_stack, load, figures, rows_before, allowed=set())
    report.add(figures)


def test_3_runner_killed_with_items_in_flight_finishes_soon_after(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("3", "jobs runner SIGKILLed with items in flight")
    total = 60
    job = fault_stack.create_job(photos, total)
    fault_stack.wait_done_items(job, 5)
    fault_stack.hurt("jobs", signal.SIGKILL)
    restarted = time.monotonic()
    # Redelivery comes within the consumer's ack wait (10 s), not the 60 s it used to take.
    fault_stack.wait_finished(job, timeout_s=45)
    figures.recovery_s = time.monotonic() - restarted
    assert_job_complete(fault_stack, job, total, figures)
    report.add(figures)


def test_4_runner_dying_between_record_and_ack_duplicates_nothing(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("4", "runner dies after its record was published, before its ack")
    total = 20
    pid = fault_stack.pid("jobs")
    fault_stack.arm("jobs.after_record_publish")
    job = fault_stack.create_job(photos, total)
    figures.recovery_s = fault_stack.wait_replaced("jobs", pid)
    assert fault_stack.processes()["jobs"]["restarts"] >= 1
    assert_job_complete(fault_stack, job, total, figures)
    report.add(figures)


def test_5_gateway_killed_right_after_accepting_a_job(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("5", "gateway SIGKILLed right after a job is accepted")
    total = 30
    job = fault_stack.create_job(photos, total)
    figures.recovery_s = fault_stack.hurt("gateway", signal.SIGKILL)
    assert_job_complete(fault_stack, job, total, figures)
    report.add(figures)


def test_6_nats_restarted_mid_job_and_under_load(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("6", "nats-server restarted mid-job and under sync load")
    total = 40
    rows_before = fault_stack.sync_row_count()
    with SteadyLoad(fault_stack.rest, photos[1]) as load:
        job = fault_stack.create_job(photos, total)
        fault_stack.wait_done_items(job, 5)
        figures.recovery_s = fault_stack.hurt("nats", signal.SIGTERM)
        fault_stack.wait_all_serving()
        time.sleep(3)
    # A sync answer is 200 (recorded) or 503 (not recorded); nothing else.
    assert_load_recorded(fault_stack, load, figures, rows_before, allowed={503})
    assert_job_complete(fault_stack, job, total, figures)
    report.add(figures)


def test_7_postgres_down_20s_predictions_keep_answering(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("7", "Postgres stopped 20 s under sync load")
    rows_before = fault_stack.sync_row_count()
    with SteadyLoad(fault_stack.rest, photos[0]) as load:
        time.sleep(2)  # the key is checked (and cached) while Postgres is up
        fault_stack.ferry("stop", "postgres")
        stopped = time.monotonic()
        eventually(lambda: not fault_stack.processes()["store"]["serving"], "store NOT_SERVING", 30)
        time.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
        fault_stack.ferry("start", "postgres")
        figures.recovery_s = eventually(
            lambda: fault_stack.processes()["store"]["serving"], "store serving again", 60
        )
    assert_load_recorded(fault_stack, load, figures, rows_before, allowed=set())
    report.add(figures)


def test_8_rolling_restart_of_every_service_fails_no_request(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("8", "rolling restart of every service, one at a time, under load")
    total = 40
    rows_before = fault_stack.sync_row_count()
    before = {name: fault_stack.pid(name) for name in ("store", "inference", "jobs", "gateway")}
    with SteadyLoad(fault_stack.rest, photos[0]) as load:
        job = fault_stack.create_job(photos, total)
        started = time.monotonic()
        fault_stack.ferry("restart", "store", "inference", "jobs", "gateway")
        figures.recovery_s = time.monotonic() - started
        time.sleep(2)
    after = {name: fault_stack.pid(name) for name in before}
    assert all(after[n] != before[n] for n in before), f"not every service restarted: {before} -> {after}"
    assert_load_recorded(fault_stack, load, figures, rows_before, allowed=set())
    assert_job_complete(fault_stack, job, total, figures)
    report.add(figures)


def test_9_jobs_dying_between_recording_a_job_and_queueing_its_items(
    fault_stack: FaultStack, photos: list[bytes], report: Report
) -> None:
    figures = Figures("9", "the job queue dies after recording a job, before queueing its items")
    total = 20
    pid = fault_stack.pid(JOB_QUEUE)  # the process that answers the gateway's SubmitJob
    fault_stack.arm("jobs.submit_after_record")
    inputs = [{"image": {"content": b64(photos[i % len(photos)])}} for i in range(total)]
    body = {"model": "efficientnet-lite0", "inputs": inputs, "request_id": f"fault-9-{time.time_ns()}"}
    started = time.monotonic()
    # The gateway retries the queue call while the supervisor restarts the queue; a client that still
    # got an answer to retry sends the same request_id again, as a client should.
    answers = []
    while True:
        status, answer = fault_stack.rest.post("/v1/jobs", body)
        answers.append(status)
        if status == 200 or time.monotonic() - started > 120:
            break
        assert status in (503, 504), answer
        time.sleep(1.0)
    assert status == 200, answer
    figures.recovery_s = time.monotonic() - started  # until the client had its job
    fault_stack.wait_replaced(JOB_QUEUE, pid)
    assert fault_stack.processes()[JOB_QUEUE]["restarts"] >= 1
    figures.notes["create_answers"] = answers
    assert_job_complete(fault_stack, answer["job"]["name"], total, figures)
    report.add(figures)
