"""Ingest's direct read of a record's traceparent agrees with OpenTelemetry's propagators."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from services.common.tracing import extract_context
from services.store.ingest import parent_context

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"
HEADERS: list[dict[str, str] | None] = [
    None,
    {},
    {"Nats-Msg-Id": "m"},
    {"Nats-Msg-Id": "m", "traceparent": f"{PARENT}-01"},
    {"traceparent": f"{PARENT}-00"},
    {"Nats-Msg-Id": "m", "traceparent": f"{PARENT.upper()}-01"},
    {"Nats-Msg-Id": "m", "traceparent": f"00-{'0' * 32}-b7ad6b7169203331-01"},
    {"Nats-Msg-Id": "m", "traceparent": f"00-0af7651916cd43dd8448eb211c80319c-{'0' * 16}-01"},
    {"Nats-Msg-Id": "m", "traceparent": f"{PARENT}-01", "tracestate": "vendor=value"},
    {"Nats-Msg-Id": "m", "traceparent": f"01-{PARENT[3:]}-01-later-fields"},
    {"Nats-Msg-Id": "m", "traceparent": f"{PARENT}-01-"},
    {"Nats-Msg-Id": "m", "traceparent": "garbage"},
]


@pytest.mark.parametrize("headers", HEADERS)
def test_parent_context_is_what_the_propagators_read(headers: dict[str, str] | None) -> None:
    fast = trace.get_current_span(parent_context(headers)).get_span_context()
    assert fast == trace.get_current_span(extract_context(headers)).get_span_context()
    assert repr(fast.trace_state) == repr(
        trace.get_current_span(extract_context(headers)).get_span_context().trace_state
    )
