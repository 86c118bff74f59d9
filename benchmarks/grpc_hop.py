"""What one gRPC hop between Ferry's processes costs at one client, and what Ferry adds to it.

``python -m benchmarks.grpc_hop`` starts a trivial ``InferenceService.Predict`` server in a child
process (it answers an empty result at once) and sends it the P1 request (the 451x300 JPEG, top 5)
one at a time, round-robin over three clients: a sync channel (the benchmarks' own client), a plain
``grpc.aio`` channel, and Ferry's channel (``services.common.channels.open_channel``: the same plus
``TracingClientInterceptor``, as the gateway and jobs call inference and store). Then the same
with the server wrapped in Ferry's ``ServerInterceptor`` (span, log fields, readiness, metrics,
error mapping), as every Ferry service is. The differences are the interceptors' share of each
hop of P1 (docs/benchmarks.md, session 5 P1). Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import grpc

from benchmarks.e2e import cat_jpeg
from benchmarks.inference import machine
from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common.channels import channel_options, open_channel

MAX_BYTES = 64 << 20
_SERVE = "serve"


class _Answers(inference_service_pb2_grpc.InferenceServiceServicer):
    async def Predict(
        self, request: inference_service_pb2.PredictRequest, context: Any
    ) -> inference_service_pb2.PredictResponse:
        return inference_service_pb2.PredictResponse(results=[inference_service_pb2.PredictResult()])


async def _serve(intercepted: bool) -> None:
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if intercepted:
        from grpc_health.v1 import health

        from services.common.interceptors import ServerInterceptor
        from services.common.readiness import Readiness
        from services.common.tracing import setup_tracing

        setup_tracing("ferry-inference", "")  # as a service without a collector
        readiness = Readiness("inference", health.aio.HealthServicer(), [""])
        readiness.check = lambda: None  # type: ignore[method-assign]  # always ready here
        interceptors = [ServerInterceptor("inference", readiness)]
    server = grpc.aio.server(options=channel_options(MAX_BYTES), interceptors=interceptors)
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(_Answers(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _measure(port: int, rounds: int) -> dict[str, float]:
    target = f"127.0.0.1:{port}"
    request = inference_service_pb2.PredictRequest(
        model="m", inputs=[types_pb2.Input(image=types_pb2.Image(content=cat_jpeg()))], top_k=5
    )
    sync = inference_service_pb2_grpc.InferenceServiceStub(
        grpc.insecure_channel(target, options=channel_options(MAX_BYTES))
    )
    plain = inference_service_pb2_grpc.InferenceServiceStub(
        grpc.aio.insecure_channel(target, options=channel_options(MAX_BYTES))
    )
    ferry = inference_service_pb2_grpc.InferenceServiceStub(open_channel(target, MAX_BYTES))
    times: dict[str, list[float]] = {"sync": [], "aio": [], "aio, Ferry's channel": []}

    async def once(name: str) -> None:
        started = time.perf_counter()
        if name == "sync":
            sync.Predict(request, timeout=10)
        else:
            stub = plain if name == "aio" else ferry
            await stub.Predict(request, timeout=10, wait_for_ready=True)
        times[name].append((time.perf_counter() - started) * 1e6)

    for _ in range(20):  # connections and caches, unmeasured
        for name in times:
            await once(name)
    for name in times:
        times[name].clear()
    for _ in range(rounds):
        for name in times:
            await once(name)
    return {name: statistics.median(values) for name, values in times.items()}


def _row(intercepted: bool, rounds: int) -> dict[str, float]:
    args = [sys.executable, "-m", "benchmarks.grpc_hop", _SERVE] + (["--intercepted"] if intercepted else [])
    server = subprocess.Popen(args, stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        return asyncio.run(_measure(port, rounds))
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="measure", choices=["measure", _SERVE])
    parser.add_argument("--intercepted", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=400, help="requests per client and server (bounded)")
    args = parser.parse_args()
    if args.mode == _SERVE:
        asyncio.run(_serve(args.intercepted))
        return
    rounds = max(20, min(args.rounds, 5000))
    print(f"one 40 KB Predict at a time, {rounds} per row, p50 µs; machine: {machine()}")
    bare, wrapped = _row(False, rounds), _row(True, rounds)
    print(f"{'client':<24} {'bare server':>12} {'+ ServerInterceptor':>20}")
    for name in bare:
        print(f"{name:<24} {bare[name]:>12.0f} {wrapped[name]:>20.0f}")
    client = bare["aio, Ferry's channel"] - bare["aio"]
    server = wrapped["aio"] - bare["aio"]
    print(f"Ferry's client interceptor: {client:+.0f} µs; its server interceptor: {server:+.0f} µs")


if __name__ == "__main__":
    main()
