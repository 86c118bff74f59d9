"""OpenTelemetry setup and W3C trace-context propagation over gRPC metadata and NATS headers.

Spans are recorded only when something exports them. Without an OTLP endpoint the provider
samples nothing: each span is OpenTelemetry's non-recording span, which still gets a trace id and
a span id (so ``traceparent`` still travels in gRPC metadata and NATS headers, answers and records
still carry ``trace_id``, and log lines still carry trace and span ids) but no attributes, events,
timings or processors: 42.6 µs of CPU a recorded span against 13-17 µs not sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF


def tracer_provider(service_name: str, otlp_endpoint: str) -> TracerProvider:
    """A provider that exports over OTLP/gRPC when an endpoint is set, else records nothing.

    With an endpoint, the sampler is the SDK's default (``OTEL_TRACES_SAMPLER``, else parent-based
    always-on): a call joins its caller's decision, so every service of a trace exports together.
    """
    resource = Resource.create({"service.name": service_name})
    if not otlp_endpoint:
        return TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    # Imported lazily: the exporter pulls in its own gRPC stack, unneeded when nothing exports.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    return provider


def setup_tracing(service_name: str, otlp_endpoint: str) -> Callable[[], None]:
    """Installs the process's tracer provider (``tracer_provider``); returns what flushes it at exit.

    A process that already has an SDK provider keeps it, and its owner shuts it down: the test
    session installs one that records every span before any service starts in-process (the global
    provider can be set only once), as would a program that embeds a service with its own tracing.
    """
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return lambda: None
    provider = tracer_provider(service_name, otlp_endpoint)
    trace.set_tracer_provider(provider)
    return provider.shutdown


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Returns ``headers`` with the current trace context (``traceparent``) added."""
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(
    pairs: Mapping[str, str] | Iterable[tuple[str, str | bytes]] | None,
) -> otel_context.Context:
    """Reads a trace context from NATS headers or gRPC metadata (keys are matched lower-case)."""
    if pairs is None:
        return otel_context.Context()
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    carrier = {k.lower(): v for k, v in items if isinstance(v, str)}
    return propagate.extract(carrier)


def current_trace_id() -> str:
    """Returns the current trace id as 32 hex digits, or an empty string outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""
