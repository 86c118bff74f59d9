"""OpenTelemetry setup and W3C trace-context propagation over gRPC metadata and NATS headers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def setup_tracing(service_name: str, otlp_endpoint: str) -> TracerProvider:
    """Installs the global tracer provider; spans go over OTLP/gRPC when an endpoint is set."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        # Imported lazily: the exporter pulls in its own gRPC stack, unneeded when tracing is local.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        )
    trace.set_tracer_provider(provider)
    return provider


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
