"""Pure rules of the runner: settings checks, backoff, error classes, message decoding."""

from __future__ import annotations

import os
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from pydantic import ValidationError

from ferry.events.v1 import events_pb2
from services.common.errors import status_to_proto
from services.jobs.retry import backoff_delay, gave_up, is_transient
from services.jobs.runner import decode_item
from services.jobs.settings import JobsSettings


def test_defaults_match_the_shared_brief(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("FERRY_JOBS_")]:
        monkeypatch.delenv(name)
    s = JobsSettings()
    assert (s.grpc_port, s.metrics_port, s.inference_target) == (50054, 9104, "127.0.0.1:50052")
    assert (s.consumer_name, s.subject_filter, s.max_deliver) == ("jobs-runner", "ferry.jobs.items.>", 5)


def test_settings_read_the_jobs_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_JOBS_MAX_DELIVER", "9")
    monkeypatch.setenv("FERRY_JOBS_NATS_URL", "nats://nats:4222")
    s = JobsSettings()
    assert (s.max_deliver, s.nats_url) == (9, "nats://nats:4222")


def test_ack_wait_must_cover_one_attempt() -> None:
    with pytest.raises(ValidationError, match="ack_wait_s"):
        JobsSettings(inference_timeout_s=30, publish_timeout_s=5, ack_wait_s=20)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 10.0)]:
        delays = [backoff_delay(attempt, base_s=1.0, max_s=10.0) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.NOT_FOUND, False),
    ],
)
def test_error_classes(code: grpc.StatusCode, transient: bool) -> None:
    assert is_transient(status_to_proto(code, "x", "X")) is transient


def test_gave_up_keeps_the_last_code_and_says_why() -> None:
    status = gave_up(status_to_proto(grpc.StatusCode.UNAVAILABLE, "inference is down", "DOWN"), 5)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert (
        status.message == "gave up after 5 attempts; the last one failed with UNAVAILABLE: inference is down"
    )
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == (
        "RETRIES_EXHAUSTED",
        {"attempts": "5", "last_reason": "DOWN"},
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
