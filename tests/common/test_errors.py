from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from services.common.errors import NotFound, ResourceExhausted, error_from_status, status_to_proto


def test_error_becomes_status_with_error_info() -> None:
    status = NotFound("model 'x' is not served", "MODEL_NOT_FOUND", {"model": "x"}).to_status()
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == "model 'x' is not served"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("MODEL_NOT_FOUND", "ferry.dev", {"model": "x"})


def test_status_round_trips_through_error_from_status() -> None:
    status = status_to_proto(grpc.StatusCode.INVALID_ARGUMENT, "input 0 is not an image", "INVALID_IMAGE")
    error = error_from_status(status)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.message, error.reason) == ("input 0 is not an image", "INVALID_IMAGE")


def test_retry_advice_and_metadata_survive_error_from_status() -> None:
    sent = ResourceExhausted(
        "queue full", "QUEUE_FULL", {"model": "m"}, retry_after=duration_pb2.Duration(nanos=250_000_000)
    )
    error = error_from_status(sent.to_status())
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUEUE_FULL",
        {"model": "m"},
    )
    assert error.retry_after is not None and error.retry_after.ToMilliseconds() == 250
