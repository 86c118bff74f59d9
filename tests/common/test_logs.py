"""Logs are JSON lines carrying the trace they were written in; the gateway logs one line per call."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.common.errors import NotFound
from services.common.interceptors import ServerInterceptor
from services.common.logs import JsonFormatter, bind, log_uncaught, setup_logging
from services.common.readiness import Readiness

tracer = TracerProvider().get_tracer("test")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Root logger output in the JSON format, restored afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("gateway"))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    yield stream
    root.handlers, root.level = saved[0], saved[1]


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_inside_a_span_carries_that_spans_trace_and_span_ids(captured: io.StringIO) -> None:
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("ferry.test").info("inside %s", "the span", extra={"job": "jobs/1"})
    logging.getLogger("ferry.test").warning("outside")

    inside, outside = lines(captured)
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["message"] == "inside the span"
    assert inside["service"] == "ferry-gateway"
    assert inside["logger"] == "ferry.test"
    assert inside["level"] == "INFO"
    assert inside["job"] == "jobs/1"
    assert inside["time"].endswith("+00:00")
    assert "trace_id" not in outside and outside["level"] == "WARNING"


def test_an_exception_is_one_line_with_its_traceback(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("ferry.test").exception("failed")
    [entry] = lines(captured)
    assert "RuntimeError: boom" in entry["exception"]


def test_an_uncaught_crash_is_one_json_record(captured: io.StringIO) -> None:
    try:
        raise ValueError("bad setting")
    except ValueError as err:
        log_uncaught(ValueError, err, err.__traceback__)
    [entry] = lines(captured)
    assert entry["level"] == "CRITICAL" and entry["message"] == "uncaught ValueError: bad setting"
    assert "Traceback" in entry["exception"]


def test_log_format_text_keeps_the_human_line(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    try:
        monkeypatch.setenv("FERRY_LOG_FORMAT", "text")
        setup_logging("jobs", "info")
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        assert "ferry-jobs %(name)s: %(message)s" in (root.handlers[0].formatter._fmt or "")  # type: ignore[union-attr]
        monkeypatch.delenv("FERRY_LOG_FORMAT")
        setup_logging("jobs", "info")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        monkeypatch.setenv("FERRY_LOG_FORMAT", "xml")
        with pytest.raises(ValueError, match="FERRY_LOG_FORMAT"):
            setup_logging("jobs", "info")
    finally:
        root.handlers, root.level = saved[0], saved[1]


async def _serve(service: str) -> tuple[grpc.aio.Server, int]:
    async def say(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        bind(tenant="acme")  # what the gateway's auth does once it knows the caller
        if request == b"missing":
            raise NotFound("no such thing", reason="THING_NOT_FOUND")
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.aio.server(interceptors=[ServerInterceptor(service, Readiness.started(service))])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_the_gateway_logs_one_access_line_per_call(captured: io.StringIO) -> None:
    server, port = await _serve("gateway")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            assert await say(b"hi", metadata=(("x-request-id", "req-1"),)) == b"hi"
            with pytest.raises(grpc.aio.AioRpcError):
                await say(b"missing")
    finally:
        await server.stop(0)

    access = [entry for entry in lines(captured) if entry["logger"] == "ferry.access"]
    assert [(a["method"], a["code"]) for a in access] == [
        ("/test.Echo/Say", "OK"),
        ("/test.Echo/Say", "NOT_FOUND"),
    ]
    ok, missing = access
    assert ok["request_id"] == "req-1" and "request_id" not in missing
    assert ok["tenant"] == "acme"
    assert isinstance(ok["duration_ms"], float)
    assert len(ok["trace_id"]) == 32 and ok["trace_id"] != missing["trace_id"]


async def test_internal_services_log_no_access_lines(captured: io.StringIO) -> None:
    server, port = await _serve("inference")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.unary_unary("/test.Echo/Say")(b"hi")
    finally:
        await server.stop(0)
    assert not [entry for entry in lines(captured) if entry["logger"] == "ferry.access"]
