"""Local traces: an OTLP/gRPC receiver (``ferry up --trace``) and ``ferry trace`` to read them.

The receiver is a real OTLP/gRPC ``TraceService``: the services and Envoy export to it exactly as
to an OpenTelemetry collector. It keeps the spans in memory (tests read them there) and, given a
file, appends each span as one JSON object per line, which ``ferry trace`` reads back.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterable
from concurrent import futures
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

TRACES_FILE = "traces.jsonl"
BAR_WIDTH = 40
HEALTH_PREFIX = "grpc.health.v1.Health/"
_STATUS = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class Span:
    """One received span, as ``traces.jsonl`` stores it (ids in hex, times in Unix nanoseconds)."""

    trace_id: str
    span_id: str
    parent_id: str
    service: str
    name: str
    start_ns: int
    end_ns: int
    status: str

    @property
    def duration_ns(self) -> int:
        """How long the span lasted."""
        return max(self.end_ns - self.start_ns, 0)


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    """The spans of one OTLP export request, each with its resource's ``service.name``."""
    spans = []
    for resource_spans in request.resource_spans:
        attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        service = attrs.get("service.name", "")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        service=service,
                        name=span.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status=_STATUS.get(span.status.code, str(span.status.code)),
                    )
                )
    return spans


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path: Path | None) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        self.path = path

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = spans_of(request)
        with self.lock:
            self.spans.extend(received)
            if self.path is not None and received:
                with self.path.open("a") as out:
                    out.writelines(json.dumps(asdict(span)) + "\n" for span in received)
        return trace_service_pb2.ExportTraceServiceResponse()


class TraceReceiver:
    """Receives OTLP/gRPC spans on ``host:port`` until stopped; appends them to ``path`` if given."""

    def __init__(self, port: int, host: str = "127.0.0.1", path: Path | None = None) -> None:
        self._servicer = _Servicer(path)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._servicer, self._server)  # type: ignore[no-untyped-call]
        self._server.add_insecure_port(f"{host}:{port}")
        self.endpoint = f"http://{host}:{port}"

    def start(self) -> None:
        """Starts serving."""
        self._server.start()

    def stop(self) -> None:
        """Stops at once; spans in flight are lost (the exporters retry or drop them)."""
        self._server.stop(grace=None)

    def spans_of_trace(self, trace_id: str) -> list[Span]:
        """Every span received so far that belongs to ``trace_id``."""
        with self._servicer.lock:
            return [s for s in self._servicer.spans if s.trace_id == trace_id]


def read_spans(path: Path) -> list[Span]:
    """The spans in a ``traces.jsonl``; a torn last line (a write in progress) is skipped."""
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        try:
            spans.append(Span(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return spans


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _ordered(spans: list[Span]) -> list[tuple[int, Span]]:
    """Depth-first by start time: (depth, span). A span whose parent is missing counts as a root."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = defaultdict(list)
    roots = []
    for span in spans:
        if span.parent_id and span.parent_id in ids and span.parent_id != span.span_id:
            children[span.parent_id].append(span)
        else:
            roots.append(span)
    ordered: list[tuple[int, Span]] = []
    stack = [(0, s) for s in sorted(roots, key=lambda s: s.start_ns, reverse=True)]
    while stack:
        depth, span = stack.pop()
        ordered.append((depth, span))
        stack.extend(
            (depth + 1, c) for c in sorted(children[span.span_id], key=lambda s: s.start_ns, reverse=True)
        )
    return ordered


def waterfall(spans: list[Span], width: int = BAR_WIDTH) -> str:
    """One trace as a terminal waterfall: a line per span, indented under its parent."""
    begin = min(s.start_ns for s in spans)
    total = max(max(s.end_ns for s in spans) - begin, 1)
    rows = []
    for depth, span in _ordered(spans):
        left = round((span.start_ns - begin) / total * width)
        length = max(round(span.duration_ns / total * width), 1)
        left = min(left, width - length)
        bar = " " * left + "█" * length + " " * (width - left - length)
        flag = "  ERROR" if span.status == "error" else ""
        rows.append(
            (
                span.service,
                "  " * depth + span.name,
                _ms(span.start_ns - begin),
                _ms(span.duration_ns),
                f"|{bar}|{flag}",
            )
        )
    services = len({s.service for s in spans})
    head = f"trace {spans[0].trace_id}: {len(spans)} spans, {services} services, {_ms(total)}"
    header = ("SERVICE", "SPAN", "START", "DURATION", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [head]
    for row in [header, *rows]:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].rjust(widths[3]),
        ]
        lines.append(("  ".join(cells) + "  " + row[4]).rstrip())
    return "\n".join(lines)


def _is_probe(span: Span) -> bool:
    return span.name.startswith(HEALTH_PREFIX)


def recent(spans: Iterable[Span], limit: int = 10) -> str:
    """The last ``limit`` traces (by when they ended): id, root span, duration, span count.

    Traces of nothing but health checks (Envoy's and the supervisor's probes) are left out.
    """
    traces: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    for trace_id in [t for t, trace in traces.items() if all(_is_probe(s) for s in trace)]:
        del traces[trace_id]
    latest = sorted(traces.values(), key=lambda t: max(s.end_ns for s in t))[-limit:]
    rows = [("TRACE ID", "ROOT", "DURATION", "SPANS")]
    for trace in reversed(latest):
        root = _ordered(trace)[0][1]
        duration = max(s.end_ns for s in trace) - min(s.start_ns for s in trace)
        rows.append((trace[0].trace_id, f"{root.service} {root.name}", _ms(duration), str(len(trace))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def show(state_dir: Path, trace_id: str | None, limit: int = 10) -> int:
    """``ferry trace [ID]``: a trace's waterfall, or the recent traces; 1 when there is nothing."""
    path = state_dir / TRACES_FILE
    spans = read_spans(path)
    if not spans:
        print(f"no spans stored in {path}; start the stack with `ferry up --trace` and send a request")
        return 1
    if not trace_id:
        print(recent(spans, limit))
        return 0
    wanted = trace_id.strip().lower()
    found = [s for s in spans if s.trace_id == wanted]
    if not found:
        print(f"no spans stored for trace {wanted} in {path} (`ferry trace` lists the recent ones)")
        return 1
    print(waterfall(found))
    return 0
