"""Downstream failures become the errors a user can act on, mapped in one place."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from devstack.infra import free_port
from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from services.common.channels import open_channel
from services.common.downstream import Backend, error_from_rpc, publishing
from services.common.errors import FerryError, InvalidArgument, NotFound, Unavailable
from tests.gateway.servers import serving


def rich_trailers(error: FerryError) -> list[tuple[str, bytes]]:
    return [("grpc-status-details-bin", error.to_status().SerializeToString())]


def test_request_errors_pass_through_with_message_and_reason() -> None:
    sent = NotFound("job 'jobs/1' not found", "JOB_NOT_FOUND", {"job": "jobs/1"})
    error = error_from_rpc("store", sent.code, sent.message, rich_trailers(sent), 5.0)
    assert (error.code, error.message, error.reason) == (
        grpc.StatusCode.NOT_FOUND,
        sent.message,
        "JOB_NOT_FOUND",
    )


def test_request_errors_without_rich_status_keep_code_and_message() -> None:
    error = error_from_rpc("store", grpc.StatusCode.INVALID_ARGUMENT, "page_size is -1", None, 5.0)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "page_size is -1")


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
def test_outage_is_unavailable_and_says_retry(code: grpc.StatusCode) -> None:
    error = error_from_rpc("inference", code, "connection refused", None, 30.0)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert "inference is unavailable" in error.message and "retry" in error.message
    assert "connection refused" not in error.message  # internals stay in the logs


def test_deadline_names_the_backend_and_its_timeout() -> None:
    error = error_from_rpc("inference", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", None, 30.0)
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "inference did not answer within 30s" in error.message and "retry" in error.message


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED]
)
def test_faults_inside_ferry_are_internal(code: grpc.StatusCode) -> None:
    error = error_from_rpc("store", code, "relation does not exist", None, 5.0)
    assert error.code == grpc.StatusCode.INTERNAL
    assert error.reason == "BACKEND_ERROR"
    assert "relation" not in error.message


class Inference(inference_service_pb2_grpc.InferenceServiceServicer):
    """Inference's contract, answering with what the test needs."""

    async def ListModels(self, request: Any, context: Any) -> inference_service_pb2.ListModelsResponse:
        await asyncio.sleep(30)  # longer than any deadline the test gives
        return inference_service_pb2.ListModelsResponse()

    async def Predict(self, request: Any, context: Any) -> inference_service_pb2.PredictResponse:
        raise InvalidArgument("top_k is 0; it must be between 1 and 100", "INVALID_TOP_K")


async def test_backend_calls_map_real_rpc_failures() -> None:
    def register(server: grpc.aio.Server) -> None:
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(Inference(), server)

    async with serving(register) as target:
        channel = open_channel(target, 1024 * 1024)
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        backend = Backend("inference", channel, timeout_s=0.3)
        with pytest.raises(FerryError) as refused:
            await backend.call(stub.Predict, inference_service_pb2.PredictRequest())
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.reason == "INVALID_TOP_K"
        with pytest.raises(FerryError) as slow:
            await backend.call(stub.ListModels, inference_service_pb2.ListModelsRequest())
        assert slow.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        await channel.close()


class Restarting(inference_service_pb2_grpc.InferenceServiceServicer):
    """An inference replica that answers UNAVAILABLE (NOT_READY) a few times, as one that is starting,
    or CANCELLED, as gRPC answers a call that arrives while a server stops."""

    def __init__(self, refusals: int, cancels: int = 0) -> None:
        self.refusals = refusals
        self.cancels = cancels
        self.calls = 0

    async def Predict(self, request: Any, context: Any) -> inference_service_pb2.PredictResponse:
        self.calls += 1
        if self.calls <= self.cancels:
            await context.abort(grpc.StatusCode.CANCELLED, "server is shutting down")
        if self.calls <= self.cancels + self.refusals:
            raise Unavailable("inference is starting; retry in 1 s", "NOT_READY")
        return inference_service_pb2.PredictResponse(results=[inference_service_pb2.PredictResult()])


async def test_backend_retries_a_replica_that_is_stopping_then_starting() -> None:
    replica = Restarting(refusals=2, cancels=1)

    def register(server: grpc.aio.Server) -> None:
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(replica, server)

    async with serving(register) as target:
        channel = open_channel(target, 1024 * 1024)
        backend = Backend("inference", channel, timeout_s=10.0)
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        answer = await backend.call(stub.Predict, inference_service_pb2.PredictRequest())
        await channel.close()
    assert len(answer.results) == 1
    assert replica.calls == 4


class Loading(inference_service_pb2_grpc.InferenceServiceServicer):
    """Inference whose model loads for two calls, then serves; and whose other model failed to load."""

    def __init__(self) -> None:
        self.calls = 0

    async def Predict(self, request: Any, context: Any) -> inference_service_pb2.PredictResponse:
        self.calls += 1
        if request.model == "broken":
            raise Unavailable("model 'broken' failed to load: no weights", "MODEL_FAILED")
        if self.calls <= 2:
            raise Unavailable(
                f"model {request.model!r} is still loading; retry in a few seconds", "MODEL_LOADING"
            )
        return inference_service_pb2.PredictResponse(results=[inference_service_pb2.PredictResult()])


async def test_backend_waits_for_a_loading_model_not_for_a_failed_one() -> None:
    replica = Loading()

    def register(server: grpc.aio.Server) -> None:
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(replica, server)

    async with serving(register) as target:
        channel = open_channel(target, 1024 * 1024)
        backend = Backend("inference", channel, timeout_s=10.0, own_unavailable=True)
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        answer = await backend.call(stub.Predict, inference_service_pb2.PredictRequest(model="cat"))
        assert (len(answer.results), replica.calls) == (1, 3)
        with pytest.raises(FerryError) as failed:
            await backend.call(stub.Predict, inference_service_pb2.PredictRequest(model="broken"))
        await channel.close()
    # Asked once (4 calls in all), with inference's own reason and message: no retrying until the deadline.
    assert (failed.value.code, failed.value.reason, replica.calls) == (
        grpc.StatusCode.UNAVAILABLE,
        "MODEL_FAILED",
        4,
    )
    assert "no weights" in failed.value.message


async def test_backend_waits_for_a_server_that_comes_up_within_the_deadline() -> None:
    replica = Restarting(refusals=0)
    port = free_port()
    channel = open_channel(f"127.0.0.1:{port}", 1024 * 1024)
    backend = Backend("inference", channel, timeout_s=15.0)
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    call = asyncio.create_task(backend.call(stub.Predict, inference_service_pb2.PredictRequest()))
    await asyncio.sleep(1.0)  # the call is made while nothing listens: a replica restarting
    assert not call.done()
    server = grpc.aio.server()
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(replica, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    answer = await call
    await server.stop(None)
    await channel.close()
    assert len(answer.results) == 1


async def test_backend_that_never_comes_up_is_unavailable_not_a_timeout() -> None:
    channel = open_channel(f"127.0.0.1:{free_port()}", 1024 * 1024)
    backend = Backend("store", channel, timeout_s=0.5)
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    with pytest.raises(FerryError) as caught:
        await backend.call(stub.Predict, inference_service_pb2.PredictRequest())
    await channel.close()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "BACKEND_UNAVAILABLE"
    assert caught.value.retry_after is not None


async def test_failed_publish_becomes_unavailable() -> None:
    with pytest.raises(FerryError) as caught:
        async with publishing("the prediction could not be recorded"):
            raise TimeoutError
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message.startswith("the prediction could not be recorded")
    assert "retry" in caught.value.message
