from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common import limits
from services.common.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    error_from_status,
    status_to_proto,
)


def test_error_becomes_status_with_error_info() -> None:
    status = NotFound("model 'x' is not served", "MODEL_NOT_FOUND", {"model": "x"}).to_status()
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == "model 'x' is not served"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("MODEL_NOT_FOUND", "ferry.dev", {"model": "x"})


def test_status_round_trips_through_error_from_status() -> None:
    status = status_to_proto(grpc.StatusCode.INVALID_ARGUMENT, "input 0 is not an image", "INVALID_IMAGE")
    error = error_from_status(status)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.message, error.reason) == ("input 0 is not an image", "INVALID_IMAGE")


def test_retry_advice_and_metadata_survive_error_from_status() -> None:
    sent = ResourceExhausted(
        "queue full", "QUEUE_FULL", {"model": "m"}, retry_after=duration_pb2.Duration(nanos=250_000_000)
    )
    error = error_from_status(sent.to_status())
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUEUE_FULL",
        {"model": "m"},
    )
    assert error.retry_after is not None and error.retry_after.ToMilliseconds() == 250


def test_a_message_quoting_a_huge_request_is_cut_to_the_limit_saying_how_much() -> None:
    # "unknown outputs [...]" quoted 100,000 names: 1 MB of trailers, past every client's limit.
    names = [f"O{i}" for i in range(100_000)]
    error = InvalidArgument(
        f"unknown outputs {names}", reason="INVALID_OIP_OUTPUT", metadata={"field": "x" * 5000}
    )
    assert len(error.message.encode()) <= limits.MAX_ERROR_MESSAGE_BYTES
    assert error.message.startswith("unknown outputs ['O0', 'O1'") and "more characters)" in error.message
    assert len(error.metadata["field"]) <= limits.MAX_ERROR_METADATA_CHARS
    wide = InvalidArgument("é" * 5000, reason="INVALID_INPUT")  # two bytes each
    assert len(wide.message.encode()) <= limits.MAX_ERROR_MESSAGE_BYTES
    assert InvalidArgument("short", reason="INVALID_INPUT").message == "short"


async def test_a_huge_error_reaches_a_default_grpc_client_whole() -> None:
    """Through a real server: a status quoting 100,000 names used to exceed the client's 16 KiB
    trailer limit (RESOURCE_EXHAUSTED "received metadata size exceeds hard limit")."""
    names = [f"O{i}" for i in range(100_000)]

    async def refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        error = InvalidArgument(
            f"unknown outputs {names}", reason="INVALID_OIP_OUTPUT", metadata={"field": "outputs"}
        )
        await context.abort_with_status(rpc_status.to_status(error.to_status()))
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("t.S", {"M": grpc.unary_unary_rpc_method_handler(refuse)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary("/t.S/M")(b"", timeout=10)
    finally:
        await server.stop(None)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert (refused.value.details() or "").startswith("unknown outputs ['O0'")
