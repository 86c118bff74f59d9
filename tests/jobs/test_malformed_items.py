"""Every way a work message can be malformed, and what becomes of it: an item whose job and
index can be read is failed with a reason (so its job ends); one that cannot is terminated.
And claim checks: an item naming its image in the Object Store runs on those bytes, or fails
INPUT_EXPIRED once they are gone, its dead letter keeping the reference only.
"""

from __future__ import annotations

import uuid

import pytest
from nats.js.errors import NotFoundError

from ferry.events.v1 import events_pb2
from services.common import messaging
from services.common.result_stores import object_store
from tests.jobs.conftest import Harness
from tests.jobs.doubles import FailureInjectingInference
from tests.jobs.test_delivery import FAILED, SUCCEEDED, by_name, error_reason, name_of


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand (protobuf itself refuses to build these)."""
    size, length = len(data), bytearray()
    while True:
        length.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(length) + data


def nested_input(depth: int) -> bytes:
    """An Input whose payload is ``{"a": {"a": ... }}`` ``depth`` objects deep: past protobuf's
    decoding limit of 100 message levels at about 33 (a Struct, a map entry and a Value each)."""
    struct = b""
    for _ in range(depth - 1):
        value = _field(5, struct)  # Value.struct_value
        struct = _field(1, _field(1, b"a") + _field(2, value))  # Struct.fields entry "a"
    return _field(3, struct)  # Input.payload


def item_bytes(job: object, index: int, input_bytes: bytes = b"", **fields: object) -> bytes:
    """A work message as the gateway publishes it, its input given as encoded bytes."""
    header = events_pb2.JobItem(
        tenant="acme", job_id=str(job), item_index=index, model="efficientnet-lite0", top_k=3, **fields
    ).SerializeToString()
    return header + (_field(5, input_bytes) if input_bytes else b"")


async def test_an_item_whose_input_cannot_be_decoded_fails_with_a_reason_and_no_dead_letter(
    harness: Harness,
) -> None:
    job = uuid.uuid4()
    await harness.publish_raw(item_bytes(job, 0, nested_input(200), input_name="holiday/broken.json"))
    await harness.publish_item(job, 1, b"a fine one beside it")
    await harness.start_runner()
    info = await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(job))
    assert records[name_of(job, 0)].state == FAILED
    assert error_reason(records[name_of(job, 0)]) == "JOB_ITEM_MALFORMED"
    assert "item 0" in records[name_of(job, 0)].error.message
    assert records[name_of(job, 0)].input_name == "holiday/broken.json"  # read by the header
    assert records[name_of(job, 1)].state == SUCCEEDED
    assert info.num_redelivered == 0
    with pytest.raises(NotFoundError):  # nothing RetryJob could run again
        await harness.dead_letter(job, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff not a protobuf",
        events_pb2.JobItem(job_id="not-a-uuid", model="m").SerializeToString(),
        events_pb2.JobItem(job_id=str(uuid.uuid4()), item_index=-1, model="m").SerializeToString(),
        # Undecodable input and no readable job: nothing to record it under.
        item_bytes("nope", 0, nested_input(200)),
    ],
    ids=["garbage", "job-id-not-a-uuid", "negative-index", "deep-input-without-a-job"],
)
async def test_a_message_naming_no_job_item_is_terminated(harness: Harness, data: bytes) -> None:
    seq = await harness.publish_raw(data)
    await harness.start_runner()
    info = await harness.wait_drained(seq)
    assert info.num_redelivered == 0
    with pytest.raises(NotFoundError):  # terminated, so gone from the work queue
        await harness.js.get_msg(messaging.WORK_STREAM, seq)


async def test_a_claim_check_runs_on_the_stored_bytes_and_fails_input_expired_once_gone(
    harness: Harness, inference: FailureInjectingInference
) -> None:
    bucket = await object_store(harness.js, "ferry_uploads", "test uploads", 1)
    await bucket.put("acme/upload/0", b"stored image bytes")
    job = uuid.uuid4()
    kept = events_pb2.ObjectRef(bucket="ferry_uploads", name="acme/upload/0", size_bytes=18)
    gone = events_pb2.ObjectRef(bucket="ferry_uploads", name="acme/upload/1", size_bytes=18)
    await harness.publish_raw(item_bytes(job, 0, input_ref=kept, input_name="photos/cat.jpg"))
    await harness.publish_raw(item_bytes(job, 1, input_ref=gone, input_name="photos/gone.jpg"))
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = by_name(await harness.records(job))
    assert records[name_of(job, 0)].state == SUCCEEDED
    assert inference.seen(b"stored image bytes") == 1  # the runner read the object's bytes
    # Each record names its photo, failed or not; the dead letter keeps it for RetryJob's re-run.
    assert [records[name_of(job, i)].input_name for i in (0, 1)] == ["photos/cat.jpg", "photos/gone.jpg"]
    assert records[name_of(job, 1)].state == FAILED
    assert error_reason(records[name_of(job, 1)]) == "INPUT_EXPIRED"
    assert "item 1" in records[name_of(job, 1)].error.message
    dead = events_pb2.JobItem.FromString((await harness.dead_letter(job, 1)).data or b"")
    assert dead.input_ref == gone and not dead.HasField("input")  # the reference, no bytes
    assert dead.input_name == "photos/gone.jpg"


async def test_a_notebook_run_on_a_model_lane_fails_with_a_reason_not_as_a_model(harness: Harness) -> None:
    job = uuid.uuid4()
    run = events_pb2.NotebookRun(notebook="report")
    await harness.publish_raw(
        events_pb2.JobItem(tenant="acme", job_id=str(job), item_index=0, notebook_run=run).SerializeToString()
    )
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    [record] = await harness.records(job)
    assert record.state == FAILED
    assert error_reason(record) == "JOB_ITEM_MALFORMED"
    assert "run of notebook 'report'" in record.error.message
