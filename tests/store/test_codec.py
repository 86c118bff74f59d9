"""The fast JSON of classes and timing is exactly what json_format writes (rows look the same either way)."""

from __future__ import annotations

import json

import pytest
from google.protobuf.json_format import MessageToDict

from ferry.types.v1 import types_pb2
from services.store import codec

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


@pytest.mark.parametrize("classes", CLASSES)
def test_classes_json_matches_json_format(classes: list[types_pb2.ClassScore]) -> None:
    expected = [MessageToDict(c, preserving_proto_field_name=True) for c in classes]
    assert json.loads(codec.classes_json(classes)) == expected


@pytest.mark.parametrize("timing", TIMINGS)
def test_timing_json_matches_json_format(timing: types_pb2.Timing) -> None:
    assert json.loads(codec.timing_json(timing)) == MessageToDict(timing, preserving_proto_field_name=True)


def test_outputs_other_than_classes_survive_the_row() -> None:
    from google.protobuf import struct_pb2

    from ferry.predictions.v1 import prediction_pb2

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
    classifier = codec.prediction_row("t", prediction_pb2.Prediction(name=prediction.name, model="models/x"))
    assert classifier.outputs is None
