"""A row holds a prediction's classes and timing as they were: the API reads back the same proto."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.json_format import MessageToDict, ParseDict

from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import FerryError
from services.store import codec
from services.store.servicer import _item_position

CLASSES = [
    [],
    [types_pb2.ClassScore(label="espresso", score=0.954144657, index=967)],
    [
        types_pb2.ClassScore(label="tench", score=0.1, index=0),
        types_pb2.ClassScore(label="", score=0.0, index=3),
    ],
    [types_pb2.ClassScore(label="odd", score=float("nan"), index=1)],
    [types_pb2.ClassScore(label="tiny", score=1e-30, index=2), types_pb2.ClassScore(label="max", score=1.0)],
]
TIMINGS = [
    types_pb2.Timing(),
    types_pb2.Timing(decode_ms=6.123456789, queue_ms=0.0, inference_ms=27.3, total_ms=41.2, batch_size=4),
    types_pb2.Timing(total_ms=float("inf"), batch_size=1),
]


def _through_a_row(
    classes: list[types_pb2.ClassScore], timing: types_pb2.Timing
) -> prediction_pb2.Prediction:
    made = prediction_pb2.Prediction(
        name=f"predictions/{uuid.uuid4()}", model="models/m", classes=classes, timing=timing
    )
    return codec.prediction_from_row(codec.prediction_row("t", made)._asdict())  # type: ignore[arg-type]


@pytest.mark.parametrize("classes", CLASSES)
def test_classes_read_back_as_the_json_rows_of_before_answered(classes: list[types_pb2.ClassScore]) -> None:
    # Before migration 0008 a row kept json_format's JSON, and the API parsed it back.
    before = [ParseDict(MessageToDict(c), types_pb2.ClassScore()) for c in classes]
    back = _through_a_row(classes, types_pb2.Timing()).classes
    assert [c.SerializeToString() for c in back] == [c.SerializeToString() for c in before]


@pytest.mark.parametrize("timing", TIMINGS)
def test_timing_reads_back_as_the_json_rows_of_before_answered(timing: types_pb2.Timing) -> None:
    before = ParseDict(MessageToDict(timing), types_pb2.Timing())
    assert _through_a_row([], timing).timing.SerializeToString() == before.SerializeToString()


def test_a_bad_id_or_time_is_a_value_error() -> None:
    good = prediction_pb2.Prediction(name=f"predictions/{uuid.uuid4()}", model="models/m")
    for bad in (
        prediction_pb2.Prediction(name="predictions/not-a-uuid"),
        prediction_pb2.Prediction(name=good.name, job="jobs/nope"),
    ):
        with pytest.raises(ValueError):
            codec.prediction_row("t", bad)
    late = prediction_pb2.Prediction()
    late.CopyFrom(good)
    late.create_time.seconds = 253_402_300_800  # year 10000
    with pytest.raises(ValueError):
        codec.prediction_row("t", late)


def test_create_time_is_timestamps_own_conversion() -> None:
    made = prediction_pb2.Prediction(name=f"predictions/{uuid.uuid4()}", model="models/m")
    for seconds, nanos in [
        (0, 0),
        (1_764_480_000, 123_456_789),
        (-62_135_596_800, 999_999_999),
        (253_402_300_799, 1),
    ]:
        made.create_time.seconds, made.create_time.nanos = seconds, nanos
        assert codec.prediction_row("t", made).create_time == made.create_time.ToDatetime(tzinfo=codec.UTC)


def test_outputs_other_than_classes_survive_the_row() -> None:
    from google.protobuf import struct_pb2

    output = struct_pb2.Struct()
    output.update({"agreed": True, "label": "espresso", "scores": {"a": 0.9}})
    prediction = prediction_pb2.Prediction(
        name="predictions/0190a5c8-7c3e-7000-8000-000000000001",
        model="models/minilm",
        state=prediction_pb2.PREDICTION_STATE_SUCCEEDED,
        embedding=[0.25, -0.5],
        output=output,
        tensors=[
            types_pb2.Tensor(name="mean_rgb", datatype="FP32", shape=[3], fp32_contents=[0.1, 0.2, 0.3])
        ],
        members=[types_pb2.MemberTiming(model="mobilenet-v2", timing=types_pb2.Timing(inference_ms=12.5))],
    )
    row = codec.prediction_row("t", prediction)
    back = codec.prediction_from_row(row._asdict())  # type: ignore[arg-type]
    for field in ("embedding", "output", "tensors", "members"):
        assert getattr(back, field) == getattr(prediction, field), field


def test_an_input_name_survives_the_row_and_an_old_row_has_none() -> None:
    prediction = prediction_pb2.Prediction(
        name="predictions/0190a5c8-7c3e-7000-8000-000000000001",
        model="models/efficientnet-lite0",
        job="jobs/0190a5c8-7c3e-7000-8000-000000000002",
        item_index=3,
        input_name="holiday/2024/café.jpg",
    )
    row = codec.prediction_row("t", prediction)
    assert row.input_name == "holiday/2024/café.jpg"
    assert codec.prediction_from_row(row._asdict()).input_name == "holiday/2024/café.jpg"  # type: ignore[arg-type]
    inline = codec.prediction_row("t", prediction_pb2.Prediction(name=prediction.name, job=prediction.job))
    assert inline.input_name is None  # NULL, as rows from before migration 0011
    old = {k: v for k, v in inline._asdict().items() if k != "input_name"}  # a row read before it
    assert codec.prediction_from_row(old).input_name == ""  # type: ignore[arg-type]
    classifier = codec.prediction_row("t", prediction_pb2.Prediction(name=prediction.name, model="models/x"))
    assert classifier.outputs is None


@pytest.mark.parametrize(
    "position",
    [
        {"t": "0001-01-01T00:00:00+14:00", "id": str(uuid.UUID(int=1))},  # year 0 in UTC
        {"t": "9999-12-31T23:59:59-14:00", "id": str(uuid.UUID(int=1))},  # year 10000 in UTC
    ],
)
def test_a_page_token_at_a_time_postgres_cannot_hold_is_invalid_not_a_500(position: dict[str, str]) -> None:
    with pytest.raises(FerryError) as caught:
        codec.keyset_position(position)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize("after", [2**31, 10**30, -2])
def test_a_job_listings_page_token_past_an_item_index_is_invalid_not_a_500(after: int) -> None:
    with pytest.raises(FerryError) as caught:
        _item_position({"i": after})
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
