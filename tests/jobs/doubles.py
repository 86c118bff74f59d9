"""A failure-injection double of InferenceService, used ONLY to drive the runner's failure paths.

It classifies nothing: each input's label is its own bytes, so a test can tell which record
came from which item. Real inference (and the real model) is exercised by tests/e2e.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry import trace

from devstack.infra import free_port
from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common.errors import NotFound, status_to_proto
from services.common.tracing import extract_context

NOT_AN_IMAGE = b"not an image"
MISSING_MODEL = "missing-model"


@dataclass
class Call:
    """One Predict call the double received."""

    model: str
    contents: list[bytes]
    top_k: int
    trace_id: int
    job_item: bool = False
    """Whether the call said its inputs are a batch job's items (inference queues them a step lower)."""


@dataclass
class FailureInjectingInference(inference_service_pb2_grpc.InferenceServiceServicer):
    """Scripted InferenceService: fails the way a test tells it to, otherwise echoes.

    * ``target``: where it listens, once started.
    * ``fail_next``: status codes for the next calls, one per call, then normal answers.
    * ``fail_always``: a code every call fails with.
    * ``hold``: when set, every call waits for this event before answering.
    * ``delay_s``: every call sleeps this long before answering (a slow model).
    * gRPC health says SERVING while it runs; ``stop()`` and ``start()`` take it down and bring
      it back on the same port, as an inference restart does.
    * model ``MISSING_MODEL``: NOT_FOUND with an ErrorInfo, as inference reports an unknown model.
    * top_k outside 1..100: INVALID_ARGUMENT for the whole request (the contract's bounds).
    * input bytes ``NOT_AN_IMAGE``: a per-item INVALID_ARGUMENT inside a normal response.
    """

    target: str = ""
    fail_next: list[grpc.StatusCode] = field(default_factory=list)
    fail_always: grpc.StatusCode | None = None
    hold: asyncio.Event | None = None
    delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)
    inflight_bytes: int = 0
    """Bytes of the inputs of the calls being answered now."""
    peak_inflight_bytes: int = 0
    """Most input bytes of calls answered at once."""
    server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Serves on a free local port (stored in ``target``), or on the same one as before."""
        server = grpc.aio.server()
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(self, server)
        health_servicer = health.aio.HealthServicer()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = int(self.target.rsplit(":", 1)[1]) if self.target else free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self.target = f"127.0.0.1:{port}"
        self.server = server

    async def stop(self) -> None:
        """Stops serving at once, failing calls in flight, as a killed inference would."""
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    def seen(self, content: bytes) -> int:
        """How many times ``content`` was sent to inference."""
        return sum(call.contents.count(content) for call in self.calls)

    async def Predict(
        self,
        request: inference_service_pb2.PredictRequest,
        context: grpc.aio.ServicerContext[
            inference_service_pb2.PredictRequest, inference_service_pb2.PredictResponse
        ],
    ) -> inference_service_pb2.PredictResponse:
        parent = extract_context(context.invocation_metadata())
        trace_id = trace.get_current_span(parent).get_span_context().trace_id
        contents = [i.image.content for i in request.inputs]
        self.calls.append(Call(request.model, contents, request.top_k, trace_id, request.job_item))
        self.called.set()
        size = sum(len(c) for c in contents)
        self.inflight_bytes += size
        self.peak_inflight_bytes = max(self.peak_inflight_bytes, self.inflight_bytes)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.inflight_bytes -= size
        code = self.fail_next.pop(0) if self.fail_next else self.fail_always
        if code is not None:
            await context.abort(code, f"injected {code.name}")
        if request.model == MISSING_MODEL:
            error = NotFound(f"model {request.model!r} is not loaded", "MODEL_NOT_FOUND")
            await context.abort_with_status(rpc_status.to_status(error.to_status()))
        if not 1 <= request.top_k <= 100:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"top_k {request.top_k} is not in 1..100")
        return inference_service_pb2.PredictResponse(
            results=[self._answer(c, len(contents), i) for i, c in enumerate(contents)]
        )

    @staticmethod
    def _answer(content: bytes, batch_size: int, position: int) -> inference_service_pb2.PredictResult:
        if content == NOT_AN_IMAGE:  # named by its position in the call, as inference does
            error = status_to_proto(
                grpc.StatusCode.INVALID_ARGUMENT, f"input {position} is not an image", "INVALID_IMAGE"
            )
            return inference_service_pb2.PredictResult(error=error)
        return inference_service_pb2.PredictResult(
            classes=[types_pb2.ClassScore(label=content.decode(), score=1.0, index=0)],
            timing=types_pb2.Timing(batch_size=batch_size),
        )
