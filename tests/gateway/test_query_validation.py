"""Checks of ListPredictions filters and GetModelStats windows: errors name the field."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from services.common import validation
from services.common.errors import FerryError
from services.gateway.records import store_list_request


def invalid(call: object, *args: object) -> FerryError:
    assert callable(call)
    with pytest.raises(FerryError) as caught:
        call(*args)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


@pytest.mark.parametrize(
    ("window", "length"),
    [("15m", timedelta(minutes=15)), ("1h", timedelta(hours=1)), ("24h", timedelta(days=1)),
     ("7d", timedelta(days=7)), ("30s", timedelta(seconds=30)), ("", timedelta(hours=1))],
)  # fmt: skip
def test_windows_a_user_would_type_are_accepted(window: str, length: timedelta) -> None:
    assert validation.stats_window(window)[1] == length


@pytest.mark.parametrize("window", ["1", "h", "0h", "-1h", "1.5h", "1w", "91d", "1 h", "1H"])
def test_bad_windows_name_the_field_and_give_examples(window: str) -> None:
    error = invalid(validation.stats_window, window)
    assert "window" in error.message and "'15m'" in error.message
    assert error.metadata == {"field": "window"}


def listing(**fields: object) -> prediction_service_pb2.ListPredictionsRequest:
    return prediction_service_pb2.ListPredictionsRequest(**fields)  # type: ignore[arg-type]


def stamp(text: str) -> Timestamp:
    value = Timestamp()
    value.FromJsonString(text)
    return value


def test_filters_map_to_stores_request() -> None:
    request = listing(
        model="models/efficientnet-lite0",
        label="tiger cat",
        min_score=0.5,
        start_time=stamp("2026-11-25T00:00:00Z"),
        end_time=stamp("2026-11-26T00:00:00Z"),
        source=prediction_pb2.PREDICTION_SOURCE_JOB_ITEM,
        state=prediction_pb2.PREDICTION_STATE_FAILED,
        page_size=7,
    )
    mapped = store_list_request("acme", request)
    assert (mapped.tenant, mapped.model, mapped.label, mapped.min_score, mapped.page_size) == (
        "acme", "efficientnet-lite0", "tiger cat", 0.5, 7,
    )  # fmt: skip
    assert (mapped.source, mapped.state) == (request.source, request.state)
    assert (mapped.start_time, mapped.end_time) == (request.start_time, request.end_time)
    assert not store_list_request("acme", listing()).HasField("start_time")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"min_score": 1.5}, "min_score"),
        ({"min_score": -0.1}, "min_score"),
        ({"model": "models/a/b"}, "model"),
        ({"label": "x" * 257}, "label"),
        ({"source": 9}, "source"),
        ({"state": 7}, "state"),
        ({"job": "predictions/1"}, "job"),
        (
            {"start_time": stamp("2026-11-26T00:00:00Z"), "end_time": stamp("2026-11-25T00:00:00Z")},
            "start_time",
        ),
        # Store could not read these: each was a 500 (native gRPC sends any Timestamp, or a NUL).
        ({"label": "tabby\x00"}, "label"),
        ({"start_time": Timestamp(seconds=2**62)}, "start_time"),
        ({"end_time": Timestamp(seconds=-(2**62))}, "end_time"),
        ({"end_time": Timestamp(seconds=0, nanos=-5)}, "end_time"),
        ({"start_time": Timestamp(seconds=2**62), "end_time": Timestamp(seconds=0)}, "start_time"),
    ],
)
def test_bad_filters_are_invalid_arguments_naming_the_field(
    request_fields: dict[str, object], field: str
) -> None:
    error = invalid(store_list_request, "acme", listing(**request_fields))
    assert field in error.message
