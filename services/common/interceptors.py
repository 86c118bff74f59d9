"""gRPC interceptors: server spans, metrics and error mapping; client trace propagation."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from services.common.errors import FerryError, Unavailable
from services.common.metrics import GRPC_LATENCY, GRPC_REQUESTS
from services.common.readiness import Readiness
from services.common.tracing import current_trace_id, extract_context, inject_headers

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ferry.grpc")

# Probes and tooling: traced, they would drown real requests in noise.
_UNOBSERVED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary handler in a span, counts it, and maps FerryError to a gRPC status.

    It is also the readiness gate: until the service is ready, every call but health and
    reflection is answered UNAVAILABLE (NOT_READY) before its handler runs.
    """

    def __init__(self, service: str, readiness: Readiness) -> None:
        self._service = service
        self._readiness = readiness

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_UNOBSERVED_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(method, metadata, handler.unary_unary),  # type: ignore[arg-type]  # aio handlers are async
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap(self, method: str, metadata: Any, inner: Handler) -> Handler:
        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            code = grpc.StatusCode.OK
            started = time.perf_counter()
            with tracer.start_as_current_span(
                method.lstrip("/"), context=extract_context(metadata), kind=trace.SpanKind.SERVER
            ) as span:
                try:
                    self._readiness.check()
                    return await inner(request, context)
                except (ConnectionError, TimeoutError) as err:
                    # A dependency reached without a client of its own mapping (a socket
                    # closed under us): an outage, so the caller is told to retry, not "a bug".
                    error = _unreachable(self._service, err)
                    code = error.code
                    log.warning("%s: %s", method, error.message)
                    await context.abort_with_status(rpc_status.to_status(error.to_status()))
                except FerryError as err:
                    code = err.code
                    span.set_status(trace.StatusCode.ERROR, err.message)
                    await context.abort_with_status(rpc_status.to_status(err.to_status()))
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except Exception:
                    code = grpc.StatusCode.INTERNAL
                    log.exception("unhandled error in %s", method)
                    await context.abort(
                        grpc.StatusCode.INTERNAL,
                        f"internal error in {self._service}; its log has the details "
                        f"(trace id {current_trace_id()})",
                    )
                finally:
                    GRPC_REQUESTS.labels(self._service, method, code.name).inc()
                    GRPC_LATENCY.labels(self._service, method).observe(time.perf_counter() - started)

        return observed


def _unreachable(service: str, err: BaseException) -> Unavailable:
    return Unavailable(
        f"{service} could not reach a dependency ({type(err).__name__}); retry in a few seconds",
        reason="DEPENDENCY_UNAVAILABLE",
        metadata={"service": service},
        retry_after=duration_pb2.Duration(seconds=1),
    )


class TracingClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Makes a client span per call and sends the trace context as ``traceparent`` metadata."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.UnaryUnaryCall[Any, Any]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> grpc.aio.UnaryUnaryCall[Any, Any]:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else method
        with tracer.start_as_current_span(name.lstrip("/"), kind=trace.SpanKind.CLIENT):
            metadata = list(client_call_details.metadata or [])
            metadata.extend(inject_headers().items())
            details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=client_call_details.timeout,
                metadata=grpc.aio.Metadata(*metadata),
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            call = await continuation(details, request)
            await call  # keep the span open until the answer arrives
            return call
