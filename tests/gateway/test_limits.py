"""Limits are defined once and settings cannot pass what another service refuses."""

from __future__ import annotations

import pydantic
import pytest
from google.protobuf import struct_pb2

from ferry.types.v1 import types_pb2
from services.common import limits, messaging, nesting, priorities
from services.common.errors import InvalidArgument
from services.gateway.settings import GatewaySettings
from services.inference.scheduling import Priority, priority_from_proto
from services.jobs.settings import JobsSettings


@pytest.mark.parametrize(
    ("variable", "value", "bound"),
    [
        ("FERRY_GATEWAY_MAX_TOP_K", "200", limits.MAX_TOP_K),
        ("FERRY_GATEWAY_MAX_BATCH_PREDICT_INPUTS", "257", limits.MAX_INPUTS_PER_REQUEST),
        ("FERRY_GATEWAY_MAX_IMAGE_BYTES", str(limits.MAX_IMAGE_BYTES + 1), limits.MAX_IMAGE_BYTES),
        ("FERRY_GATEWAY_MAX_JOB_ITEMS", str(limits.MAX_JOB_ITEMS + 1), limits.MAX_JOB_ITEMS),
    ],
)
def test_a_setting_above_its_limit_is_refused_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, bound: int
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(pydantic.ValidationError) as raised:
        GatewaySettings()
    message = str(raised.value)
    assert variable in message and f"at most {bound}" in message


def test_settings_at_their_limits_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_GATEWAY_MAX_TOP_K", str(limits.MAX_TOP_K))
    monkeypatch.setenv("FERRY_GATEWAY_MAX_BATCH_PREDICT_INPUTS", str(limits.MAX_INPUTS_PER_REQUEST))
    settings = GatewaySettings()
    assert settings.max_top_k == limits.MAX_TOP_K


def test_every_priority_encoding_reads_the_one_table() -> None:
    assert messaging.PRIORITIES == ("high", "normal", "low")
    for p in priorities.TABLE:
        assert messaging.priority_token(p.proto) == p.name
        assert messaging.job_items_subject(p.name).endswith(f".{p.name}")
        assert int(priority_from_proto(p.proto)) == p.handicap
        assert priorities.of_name(p.name.upper()) is p
    assert JobsSettings().priority_weights == {"high": 6, "normal": 3, "low": 1}
    assert messaging.priority_token(types_pb2.PRIORITY_UNSPECIFIED) == "normal"
    assert priority_from_proto(types_pb2.PRIORITY_UNSPECIFIED) is Priority.NORMAL
    with pytest.raises(ValueError, match="is not a ferry"):
        messaging.priority_token(9)


def test_json_nested_past_the_limit_is_too_deep_however_deep() -> None:
    limit = limits.MAX_JSON_DEPTH
    assert nesting.json_depth(nesting.loads("[" * limit + "]" * limit)) == limit
    for depth in (limit + 1, 200, 100_000):
        with pytest.raises(nesting.TooDeep):
            nesting.loads("[" * depth + "]" * depth)
    with pytest.raises(ValueError):
        nesting.loads("{not json")


def test_a_struct_nested_past_the_limit_is_refused_naming_the_limit() -> None:
    value: dict[str, object] = {}
    for _ in range(limits.MAX_JSON_DEPTH - 1):
        value = {"a": value}
    ok = struct_pb2.Struct()
    ok.update(value)
    nesting.check_struct(ok, "payload")
    deeper = struct_pb2.Struct()
    deeper.update({"a": value})
    with pytest.raises(InvalidArgument) as raised:
        nesting.check_struct(deeper, "payload")
    assert raised.value.reason == "NESTING_TOO_DEEP"
    assert raised.value.metadata["max_depth"] == str(limits.MAX_JSON_DEPTH)


@pytest.mark.parametrize(
    "text", ['{"text": "\\udc00"}', '{"a\\ud800": 1}', '[{"id": "x\\udbff"}]', b'{"text": "\\ud800"}']
)
def test_json_holding_a_lone_surrogate_is_refused_as_not_unicode(text: str | bytes) -> None:
    # json.loads keeps "\udc00" as a Python str that no protobuf string or Struct can take: it
    # used to raise UnicodeEncodeError deep in the jobs service's manifest expansion.
    with pytest.raises(ValueError, match="lone UTF-16 surrogate"):
        nesting.loads(text)


def test_json_escapes_of_valid_unicode_pass() -> None:
    assert nesting.loads('{"text": "\\ud83d\\ude00 caf\\u00e9"}') == {"text": "\U0001f600 café"}
