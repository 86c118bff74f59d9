"""Ingest's fast JSON writes exactly the text json.dumps(json_format.MessageToDict(...)) writes."""

from __future__ import annotations

import json
import random
import struct

from google.protobuf.internal import type_checkers
from google.protobuf.json_format import MessageToDict

from ferry.types.v1 import types_pb2
from services.store import codec


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def test_shortest_float32_agrees_with_protobuf_on_many_values() -> None:
    rng = random.Random(9)
    scores = [_float32(rng.random()) for _ in range(20_000)]  # softmax-like
    scores += [_float32(rng.random() ** 8) for _ in range(5_000)]  # tiny scores
    bits = (struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0] for _ in range(20_000))
    scores += [b for b in bits if b == b and abs(b) != float("inf")]  # any finite float32
    scores += [_float32(x) for x in (1e-45, 1.17549435e-38, 3.4028235e38, 0.1, 1.0, 123456.789)]
    assert [codec.shortest_float32(s) for s in scores] == [type_checkers.ToShortestFloat(s) for s in scores]


def test_classes_and_timing_text_is_json_dumps_text() -> None:
    classes = [
        types_pb2.ClassScore(label='quote " backslash \\ é ☕', score=0.954144657, index=967),
        types_pb2.ClassScore(label="", score=0.0, index=3),
        types_pb2.ClassScore(label="tiny", score=1e-30),
    ]
    timing = types_pb2.Timing(decode_ms=6.123456789, queue_ms=0.0, inference_ms=1e-7, batch_size=4)
    expected_classes = json.dumps([MessageToDict(c, preserving_proto_field_name=True) for c in classes])
    assert codec.classes_json(classes) == expected_classes
    assert codec.timing_json(timing) == json.dumps(MessageToDict(timing, preserving_proto_field_name=True))
