"""Pure rules of the runner: settings checks, backoff, error classes, message decoding."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from pydantic import ValidationError

from ferry.events.v1 import events_pb2
from services.common.errors import status_to_proto
from services.jobs.retry import Backoff, gave_up, is_transient
from services.jobs.runner import decode_item
from services.jobs.settings import JobsSettings


def test_defaults_match_the_shared_brief(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("FERRY_JOBS_")]:
        monkeypatch.delenv(name)
    s = JobsSettings()
    assert (s.grpc_port, s.metrics_port, s.inference_target) == (50054, 9104, "127.0.0.1:50052")
    assert (s.consumer_name, s.subject_filter) == ("jobs-runner", "ferry.jobs.items.>")
    assert (s.retry_budget_s, s.ack_wait_s) == (300.0, 10.0)
    assert not hasattr(s, "max_deliver")


def test_roles_are_the_queue_the_runner_or_both() -> None:
    assert (JobsSettings().serves_queue, JobsSettings().runs_work) == (True, True)
    queue = JobsSettings(roles=" queue ")
    assert (queue.roles, queue.serves_queue, queue.runs_work) == ("queue", True, False)
    assert JobsSettings(roles="runner,queue").roles == "queue,runner"
    for wrong in ("", ",", "queue,runners", "api"):
        with pytest.raises(ValidationError, match="roles must name one or both of queue, runner"):
            JobsSettings(roles=wrong)


def test_settings_read_the_jobs_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_JOBS_RETRY_BUDGET_S", "42")
    monkeypatch.setenv("FERRY_JOBS_NATS_URL", "nats://nats:4222")
    s = JobsSettings()
    assert (s.retry_budget_s, s.nats_url) == (42.0, "nats://nats:4222")


def test_settings_reject_a_backoff_that_would_not_grow_or_an_ack_wait_that_floods() -> None:
    with pytest.raises(ValidationError, match="backoff_max_s"):
        JobsSettings(backoff_base_s=10, backoff_max_s=1)
    with pytest.raises(ValidationError, match="ack_wait_s"):
        JobsSettings(ack_wait_s=0.1)
    # A long inference call no longer needs a longer ack wait: heartbeats keep the item.
    JobsSettings(inference_timeout_s=300, ack_wait_s=10)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(base_s=1.0, max_s=10.0, budget_s=1000.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 10.0)]:
        delays = [backoff.delay(attempt, key) for key in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 100  # items that failed together retry at different times


def test_backoff_is_the_same_in_every_process() -> None:
    # The schedule must be recomputable by a runner that did not make the earlier attempts.
    first, second = Backoff(0.5, 30.0, 300.0), Backoff(0.5, 30.0, 300.0)
    assert [first.delay(a, 7) for a in range(1, 20)] == [second.delay(a, 7) for a in range(1, 20)]
    assert first.waited(12, 7) == second.waited(12, 7)
    code = "from services.jobs.retry import Backoff; print(repr(Backoff(0.5, 30.0, 300.0).delay(3, 7)))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(other.stdout) == first.delay(3, 7)


def test_retries_go_on_until_the_budget_is_spent_then_stop() -> None:
    backoff = Backoff(base_s=0.5, max_s=30.0, budget_s=300.0)
    attempt, delays = 1, []
    while (delay := backoff.next_delay(attempt, key=3)) is not None:
        delays.append(delay)
        attempt += 1
    assert sum(delays) == pytest.approx(300.0)  # the last delay is cut to end on the budget
    assert backoff.waited(attempt - 1, key=3) == 300.0
    assert len(delays) > 5  # far more than main's five attempts
    assert all(d <= 30.0 for d in delays)
    assert backoff.next_delay(attempt + 10, key=3) is None  # a later redelivery gives up too


def test_a_zero_budget_means_no_retries() -> None:
    assert Backoff(base_s=0.5, max_s=30.0, budget_s=0.0).next_delay(1, key=1) is None


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.ABORTED, True),
        (grpc.StatusCode.CANCELLED, True),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.UNKNOWN, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
    ],
)
def test_error_classes(code: grpc.StatusCode, transient: bool) -> None:
    assert is_transient(status_to_proto(code, "x", "X")) is transient


def test_gave_up_keeps_the_last_code_and_says_how_long_it_tried() -> None:
    status = gave_up(status_to_proto(grpc.StatusCode.UNAVAILABLE, "inference is down", "DOWN"), 17, 300.0)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert status.message == (
        "gave up after retrying for 300.0s (17 attempts); "
        "the last one failed with UNAVAILABLE: inference is down"
    )
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == (
        "RETRIES_EXHAUSTED",
        {"attempts": "17", "retried_s": "300.0", "last_reason": "DOWN"},
    )


def test_decode_item_accepts_a_job_item_and_rejects_the_rest() -> None:
    job = uuid.uuid4()
    item, job_id = decode_item(events_pb2.JobItem(job_id=str(job), item_index=2).SerializeToString())
    assert (job_id, item.item_index) == (job, 2)
    for bad, why in [
        (b"\xff\xff\xff", "not a ferry.events.v1.JobItem"),
        (events_pb2.JobItem(job_id="nope").SerializeToString(), "not a UUID"),
        (events_pb2.JobItem(job_id=str(job), item_index=-1).SerializeToString(), "negative"),
    ]:
        with pytest.raises(ValueError, match=why):
            decode_item(bad)
