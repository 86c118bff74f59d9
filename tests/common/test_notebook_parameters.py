"""Notebook parameters keep their types from ``ferry job --param`` (or REST) to papermill."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from services.common.notebooks import parameters_of


def _through_the_wire(parameters: dict[str, Any]) -> dict[str, Any]:
    payload = struct_pb2.Struct()
    payload.update(parameters)
    return parameters_of(struct_pb2.Struct.FromString(payload.SerializeToString()))


def test_every_json_type_comes_back_as_it_went() -> None:
    sent = {
        "count": 3,
        "negative": -7,
        "big": 2**40,
        "ratio": 0.25,
        "flag": True,
        "off": False,
        "text": "hello",
        "empty": None,
        "items": [1, 2.5, "x", [3]],
        "nested": {"n": 4, "f": 1.5},
    }
    received = _through_the_wire(sent)
    assert received == sent
    # == says 3 == 3.0; the types are what papermill writes into the cell (count = 3, not 3.0).
    assert type(received["count"]) is int and type(received["ratio"]) is float
    assert type(received["flag"]) is bool and type(received["items"][0]) is int
    assert type(received["items"][1]) is float and type(received["nested"]["n"]) is int


def test_numbers_a_double_cannot_hold_exactly_stay_floats() -> None:
    assert type(_through_the_wire({"huge": 1e300})["huge"]) is float
