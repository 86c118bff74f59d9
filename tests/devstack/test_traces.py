"""The local trace receiver stores what a real OTLP exporter sends; ``ferry trace`` draws it."""

from __future__ import annotations

import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from devstack.infra import free_port
from devstack.traces import TRACES_FILE, Span, TraceReceiver, read_spans, recent, show, waterfall


def test_the_receiver_appends_every_exported_span_with_its_parent(tmp_path: Path) -> None:
    receiver = TraceReceiver(free_port(), path=tmp_path / TRACES_FILE)
    receiver.start()
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "ferry-test"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(receiver.endpoint, insecure=True)))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner"):
            time.sleep(0.01)
        provider.shutdown()
    finally:
        receiver.stop()
    trace_id = format(outer.get_span_context().trace_id, "032x")
    spans = {s.name: s for s in read_spans(tmp_path / TRACES_FILE)}
    assert set(spans) == {"outer", "inner"}
    assert spans["inner"].parent_id == spans["outer"].span_id
    assert spans["outer"].parent_id == ""
    assert {s.trace_id for s in spans.values()} == {trace_id}
    assert spans["inner"].service == "ferry-test"
    assert spans["inner"].duration_ns >= 10_000_000
    assert len(receiver.spans_of_trace(trace_id)) == 2


def _span(span_id: str, parent: str, service: str, start_ms: int, end_ms: int) -> Span:
    return Span(
        "ab" * 16, span_id, parent, service, f"{service} call", start_ms * 10**6, end_ms * 10**6, "ok"
    )


def test_the_waterfall_indents_children_under_their_parent_and_scales_bars_to_the_trace() -> None:
    spans = [
        _span("3", "2", "ferry-inference", 20, 60),
        _span("1", "", "ferry-envoy", 0, 100),
        _span("2", "1", "ferry-gateway", 10, 90),
    ]
    lines = waterfall(spans, width=10).splitlines()
    assert lines[0] == f"trace {'ab' * 16}: 3 spans, 3 services, 100.0 ms"
    envoy, gateway, inference = lines[2:]
    assert envoy.startswith("ferry-envoy ") and "  ferry-envoy call" in envoy
    assert "    ferry-gateway call" in gateway
    assert "      ferry-inference call" in inference
    assert envoy.endswith("|██████████|")
    assert inference.endswith("|  ████    |")
    assert "20.0 ms" in inference and "40.0 ms" in inference
    assert "ferry-envoy ferry-envoy call" in " ".join(recent(spans).split())


def test_ferry_trace_says_when_nothing_is_stored(tmp_path: Path) -> None:
    assert show(tmp_path, "ab" * 16) == 1
    (tmp_path / TRACES_FILE).write_text('{"torn": ')
    assert show(tmp_path, "") == 1


def test_the_list_leaves_out_traces_of_health_checks_only() -> None:
    probe = Span("cd" * 16, "9", "", "ferry-gateway", "grpc.health.v1.Health/Check", 0, 10**6, "ok")
    listed = recent([probe, _span("1", "", "ferry-envoy", 0, 100)])
    assert "ab" * 16 in listed and "cd" * 16 not in listed
