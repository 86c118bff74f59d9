"""gRPC interceptors: server spans, metrics, access logs and error mapping; client trace propagation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, NamedTuple

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError
from grpc_status import rpc_status
from opentelemetry import trace

from services.common import nesting
from services.common.errors import FerryError, InvalidArgument, Unavailable
from services.common.logs import bind, new_rpc_fields, reset_rpc_fields
from services.common.metrics import GRPC_LATENCY, GRPC_REQUESTS
from services.common.readiness import Readiness
from services.common.tracing import current_trace_id, extract_context, inject_headers

log = logging.getLogger(__name__)
#: One line per RPC (method, code, duration_ms, trace id, and tenant/request id when known).
access_log = logging.getLogger("ferry.access")
tracer = trace.get_tracer("ferry.grpc")

# Probes and tooling: traced, they would drown real requests in noise.
_UNOBSERVED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any]
Serializer = Callable[[Any], bytes]
#: Asked with the method before a call is read: the error to refuse it with at once, or None.
Shed = Callable[[str], "FerryError | None"]
#: Asked with a call's request bytes before they are parsed: the error to refuse it with, or None.
Prescan = Callable[[bytes], "FerryError | None"]


def _unread(data: bytes) -> None:
    """The deserializer of a shed call: its request is never looked at."""


def _as_is(message: bytes) -> bytes:
    """The response serializer of a method whose handler yields its messages already serialized."""
    return message


class Undecodable:
    """Stands in for a request message protobuf could not parse, so the call can refuse it as 400.

    gRPC parses a request before any interceptor or handler sees it, and a parse error there is
    answered UNKNOWN with a traceback in the log: a caller's bytes (a JSON payload nested 50 deep,
    which the edge transcodes into 150 protobuf levels; truncated or garbled protobuf) would look
    like a bug of ours. The guarded deserializer returns this instead and the call refuses it.
    """

    __slots__ = ("error", "refused")

    def __init__(self, error: str, refused: FerryError | None = None) -> None:
        self.error = error
        self.refused = refused
        """The refusal a prescan of the bytes gave, when it was that and not the parse."""

    def refusal(self) -> FerryError:
        """What to answer: the prescan's refusal; else INVALID_ARGUMENT, NESTING_TOO_DEEP past
        protobuf's depth, else MALFORMED_REQUEST."""
        if self.refused is not None:
            return self.refused
        if "MaxDepth" in self.error:
            return nesting.too_deep("the request")
        if "UTF-8" in self.error:
            # REST callers reach this through a query parameter or JSON string the transcoder
            # copied as bytes (?page_token=%ff): "not a valid protobuf message" told them nothing.
            return InvalidArgument(
                f"a text field of the request is not valid UTF-8 ({self.error}); send text as UTF-8"
                " (in a URL, percent-encode its UTF-8 bytes), and page tokens as they were given",
                reason="MALFORMED_REQUEST",
            )
        return InvalidArgument(
            f"the request is not a valid protobuf message ({self.error}); send the message the method takes",
            reason="MALFORMED_REQUEST",
        )


def guarded(deserialize: Deserializer | None, prescan: Prescan | None = None) -> Deserializer | None:
    """``deserialize``, returning an Undecodable instead of raising for bytes protobuf cannot parse,
    or that ``prescan`` refuses before they are parsed."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        refused = prescan(data) if prescan is not None else None
        if refused is not None:
            return Undecodable(refused.message, refused)
        try:
            return deserialize(data)
        except DecodeError as err:
            return Undecodable(str(err))

    return parse


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream's messages, raising the refusal of the first that could not be parsed."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.refusal()
        yield request


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handler of every method (but those under ``open_prefixes``) once, then reuses it.

    Subclasses implement ``wrap_unary`` (also used for client-streaming methods) and
    ``wrap_stream``. A wrapper serves every call of its
    method, so it reads per-call data (metadata) from the call's context and never captures it:
    building closures and handler objects for each call cost a measurable share of a cheap call.
    """

    open_prefixes: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(self.open_prefixes):
            return handler
        if handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self.wrap_unary(method, handler.unary_unary),  # type: ignore[arg-type]  # aio handlers are async
                request_deserializer=self.deserializer(method, handler.request_deserializer),
                response_serializer=self.serializer(method, handler.response_serializer),
            )
        elif handler.unary_stream is not None:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self.wrap_stream(method, handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=self.deserializer(method, handler.request_deserializer),
                response_serializer=self.serializer(method, handler.response_serializer),
            )
        elif handler.stream_unary is not None:
            # Client streaming (CreateUpload): one answer, so it is wrapped as a unary call whose
            # "request" is the iterator of the client's messages, passed through untouched.
            wrapped = grpc.stream_unary_rpc_method_handler(
                self.wrap_unary(method, handler.stream_unary),  # type: ignore[arg-type]
                request_deserializer=self.deserializer(method, handler.request_deserializer),
                response_serializer=self.serializer(method, handler.response_serializer),
            )
        else:
            return handler
        self._handlers[method] = wrapped  # only registered methods get here: the dict stays small
        return wrapped

    def deserializer(self, method: str, inner: Deserializer | None) -> Deserializer | None:
        """The request deserializer ``method``'s wrapped handler uses: ``inner`` unless a subclass
        guards it."""
        return inner

    def serializer(self, method: str, inner: Serializer | None) -> Serializer | None:
        """The response serializer ``method``'s wrapped handler uses: ``inner`` unless a subclass
        replaces it."""
        return inner

    def wrap_unary(self, method: str, inner: Handler) -> Handler:
        """The handler that runs instead of unary ``inner``."""
        raise NotImplementedError

    def wrap_stream(self, method: str, inner: StreamHandler) -> StreamHandler:
        """The handler that runs instead of server-streaming ``inner``."""
        raise NotImplementedError


class ServerInterceptor(WrappingInterceptor):
    """Wraps every unary and server-streaming handler in a span, counts it, maps FerryError to a status.

    It is also the readiness gate: until the service is ready, every call but health and
    reflection is answered UNAVAILABLE (NOT_READY) before its handler runs.

    Every call gets fresh log fields (``services.common.logs.bind``), starting with Envoy's
    ``x-request-id``; the public edge (the gateway, by default) also logs one access line per call.
    """

    open_prefixes = _UNOBSERVED_PREFIXES

    def __init__(
        self,
        service: str,
        readiness: Readiness,
        access_log: bool | None = None,
        shed: Shed | None = None,
        prescans: Mapping[str, Prescan] | None = None,
        serialized: Collection[str] = (),
    ) -> None:
        super().__init__()
        self.shed = shed
        """Asked before each unary call is read: an error refuses it at once (see ``Shed``)."""
        self._prescans = dict(prescans or {})
        """By method: a check of the request's bytes before they are parsed (see ``Prescan``)."""
        self._serialized = frozenset(serialized)
        """Methods whose handlers yield their responses already serialized: sent as they are."""
        self._refusals: dict[str, tuple[FerryError, grpc.RpcMethodHandler[Any, Any]]] = {}
        self._service = service
        self._readiness = readiness
        self._access_log = service == "gateway" if access_log is None else access_log
        # Per method (and code), its metric children: labels() costs a lock and a tuple per call.
        self._latency: dict[str, Any] = {}
        self._requests: dict[tuple[str, grpc.StatusCode], Any] = {}

    def deserializer(self, method: str, inner: Deserializer | None) -> Deserializer | None:
        return guarded(inner, self._prescans.get(method))

    def serializer(self, method: str, inner: Serializer | None) -> Serializer | None:
        return _as_is if method in self._serialized else inner

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if self.shed is not None:
            method = handler_call_details.method
            cached = self._handlers.get(method)
            # Unary methods already seen (their kind is known); streams are never shed.
            if cached is not None and cached.unary_unary is not None:
                error = self.shed(method)
                if error is not None:
                    return self._refusing(method, error)
        return await super().intercept_service(continuation, handler_call_details)

    def _refusing(self, method: str, error: FerryError) -> grpc.RpcMethodHandler[Any, Any]:
        """A handler that refuses with ``error`` without reading the request (made once per error).

        An overloaded gateway refuses most of what it is sent: each refusal must cost next to
        nothing, or refusing itself fills the event loop and slows the calls it admitted. So no
        request parsing (a Predict carries megabytes of image), no span, and a status built once;
        the call is still counted and access-logged.
        """
        known = self._refusals.get(method)
        if known is not None and known[0] is error:
            return known[1]
        status = _grpc_status(error)
        code = error.code

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._count(method, code, 0.0)
            if self._access_log:
                access_log.info(
                    "%s %s %.1fms",
                    method,
                    code.name,
                    0.0,
                    extra={"method": method, "code": code.name, "duration_ms": 0.0, "shed": True},
                )
            await context.abort_with_status(status)

        handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
            refuse, request_deserializer=_unread
        )
        self._refusals[method] = (error, handler)
        return handler

    def wrap_unary(self, method: str, inner: Handler) -> Handler:
        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with self._observing(method, context):
                if isinstance(request, Undecodable):
                    raise request.refusal()
                if hasattr(request, "__aiter__"):  # a client stream (see intercept_service)
                    request = _decoded_stream(request)
                return await inner(request, context)

        return observed

    def wrap_stream(self, method: str, inner: StreamHandler) -> StreamHandler:
        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with self._observing(method, context):
                if isinstance(request, Undecodable):
                    raise request.refusal()
                async for response in inner(request, context):
                    yield response

        return observed

    @contextlib.asynccontextmanager
    async def _observing(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        """One call's span, log fields, readiness gate, error mapping, metrics and access line."""
        code = grpc.StatusCode.OK
        started = time.perf_counter()
        fields = new_rpc_fields()
        # gRPC metadata keys arrive lower-case; binary values (-bin) are bytes and not needed here.
        headers = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        request_id = headers.get("x-request-id")
        if request_id:
            bind(request_id=request_id)
        # Without a traceparent there is nothing to extract: the call starts a trace of its own.
        parent = extract_context(headers) if "traceparent" in headers else None
        with tracer.start_as_current_span(
            method.lstrip("/"), context=parent, kind=trace.SpanKind.SERVER
        ) as span:
            try:
                self._readiness.check()
                yield
            except (ConnectionError, TimeoutError) as err:
                # A dependency reached without a client of its own mapping (a socket
                # closed under us): an outage, so the caller is told to retry, not "a bug".
                error = _unreachable(self._service, err)
                code = error.code
                log.warning("%s: %s", method, error.message)
                await context.abort_with_status(_grpc_status(error))
            except FerryError as err:
                code = err.code
                span.set_status(trace.StatusCode.ERROR, err.message)
                await context.abort_with_status(_grpc_status(err))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the caller went away (a closed stream, say)
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
                elapsed = time.perf_counter() - started
                self._count(method, code, elapsed)
                if self._access_log:
                    duration_ms = round(elapsed * 1000, 1)
                    access_log.info(
                        "%s %s %.1fms",
                        method,
                        code.name,
                        duration_ms,
                        extra={"method": method, "code": code.name, "duration_ms": duration_ms},
                    )
                reset_rpc_fields(fields)

    def _count(self, method: str, code: grpc.StatusCode, elapsed: float) -> None:
        requests = self._requests.get((method, code))
        if requests is None:
            requests = self._requests[(method, code)] = GRPC_REQUESTS.labels(self._service, method, code.name)
        latency = self._latency.get(method)
        if latency is None:
            latency = self._latency[method] = GRPC_LATENCY.labels(self._service, method)
        requests.inc()
        latency.observe(elapsed)


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _grpc_status(err: FerryError) -> grpc.Status:
    """The status of ``err``: its google.rpc.Status, and a ``retry-after`` trailer when it has RetryInfo.

    Envoy's transcoder turns the trailers of such an answer into response headers, so REST
    callers get the standard ``Retry-After`` header (whole seconds, rounded up).
    """
    status = rpc_status.to_status(err.to_status())
    if err.retry_after is None:
        return status
    seconds = max(1, math.ceil(err.retry_after.seconds + err.retry_after.nanos / 1e9))
    trailers = (*status.trailing_metadata, ("retry-after", str(seconds)))
    return _Status(status.code, status.details, trailers)  # type: ignore[return-value]  # grpc.Status is a bare ABC


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
