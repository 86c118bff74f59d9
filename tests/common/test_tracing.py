"""Spans are recorded only when something exports them; trace context travels either way."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

from opentelemetry import trace

from devstack.infra import free_port
from devstack.traces import TraceReceiver
from services.common.logs import JsonFormatter
from services.common.tracing import extract_context, inject_headers, setup_tracing, tracer_provider

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_without_an_endpoint_spans_are_not_recorded_but_carry_the_trace_on() -> None:
    tracer = tracer_provider("ferry-test", "").get_tracer("test")
    with tracer.start_as_current_span("call", context=extract_context({"traceparent": CALLER})) as call:
        call.set_attribute("ferry.model", "cat")  # a no-op, not an error
        assert not call.is_recording()
        with tracer.start_as_current_span("downstream") as downstream:
            sent = inject_headers()
            line = json.loads(JsonFormatter("gateway").format(logging.makeLogRecord({"msg": "hi"})))
    # The caller's trace goes on: downstream calls, NATS headers and log lines all carry it.
    caller_trace = CALLER.split("-")[1]
    assert format(call.get_span_context().trace_id, "032x") == caller_trace
    assert sent["traceparent"].split("-")[1] == caller_trace
    assert sent["traceparent"].split("-")[2] == format(downstream.get_span_context().span_id, "016x")
    assert sent["traceparent"].endswith("-00")  # not sampled: a service that exports records it not
    assert line["trace_id"] == caller_trace and len(line["span_id"]) == 16
    # A call with no caller's trace starts one of its own: its answer still has a trace id.
    with tracer.start_as_current_span("root") as root:
        assert root.get_span_context().is_valid and not root.is_recording()


def test_with_an_endpoint_every_span_is_exported() -> None:
    receiver = TraceReceiver(free_port())
    receiver.start()
    try:
        provider = tracer_provider("ferry-test", receiver.endpoint)
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner"):
            assert outer.is_recording()
        provider.shutdown()  # flushes the batch processor
        trace_id = format(outer.get_span_context().trace_id, "032x")
        assert sorted(s.name for s in receiver.spans_of_trace(trace_id)) == ["inner", "outer"]
    finally:
        receiver.stop()


def test_a_process_that_has_a_provider_keeps_it() -> None:
    installed = trace.get_tracer_provider()  # the test session's, which records every span
    shutdown = setup_tracing("ferry-test", "")
    assert trace.get_tracer_provider() is installed
    with trace.get_tracer("test").start_as_current_span("still recorded") as span:
        assert span.is_recording()
    shutdown()  # not ours to shut down: a no-op
    with trace.get_tracer("test").start_as_current_span("after") as span:
        assert span.is_recording()


def test_a_service_process_without_an_endpoint_records_no_span() -> None:
    """What ``run_service`` installs in a process of its own (the global provider is set once)."""
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from services.common.tracing import current_trace_id, inject_headers, setup_tracing
        setup_tracing("ferry-gateway", "")
        with trace.get_tracer("ferry.grpc").start_as_current_span("Predict") as span:
            print(span.is_recording(), current_trace_id(), inject_headers()["traceparent"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    recording, trace_id, traceparent = done.stdout.split()
    assert recording == "False"
    assert len(trace_id) == 32 and traceparent.split("-")[1] == trace_id
