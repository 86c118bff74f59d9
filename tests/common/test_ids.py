from __future__ import annotations

import time
import uuid

import pytest

from services.common.errors import InvalidArgument
from services.common.ids import item_record_id, job_id_for_request, parse_name, uuid7


def test_uuid7_has_version_7_and_sorts_by_time() -> None:
    first = uuid7()
    time.sleep(0.002)  # next millisecond, so the timestamp prefix must grow
    second = uuid7()
    assert first.version == 7 and second.version == 7
    assert first.variant == uuid.RFC_4122
    assert str(first) < str(second)
    assert abs((first.int >> 80) - time.time_ns() // 1_000_000) < 5_000


def test_uuid7_is_unique() -> None:
    assert len({uuid7() for _ in range(10_000)}) == 10_000


def test_job_id_is_deterministic_per_tenant_and_request() -> None:
    assert job_id_for_request("acme", "r-1") == job_id_for_request("acme", "r-1")
    assert job_id_for_request("acme", "r-1") != job_id_for_request("other", "r-1")
    assert job_id_for_request("acme", "r-1") != job_id_for_request("acme", "r-2")


def test_item_record_id_is_deterministic_per_item() -> None:
    job = uuid7()
    assert item_record_id(job, 3) == item_record_id(job, 3)
    assert len({item_record_id(job, i) for i in range(100)}) == 100


def test_parse_name_accepts_full_and_bare_ids() -> None:
    value = uuid7()
    assert parse_name(f"jobs/{value}", "jobs") == value
    assert parse_name(str(value), "jobs") == value


def test_parse_name_rejects_garbage_with_a_useful_message() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_name("jobs/nope", "jobs")
    assert "jobs/<uuid>" in caught.value.message
    assert caught.value.reason == "INVALID_RESOURCE_NAME"
