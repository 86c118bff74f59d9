"""Inference-service benchmark: the raw model in-process vs Ferry's inference service over gRPC.

``python -m benchmarks.inference`` measures, in one run on the same machine:

* raw: the same model code (ModelRunner, same preprocessing), batch 1, sequential, in this process;
* Ferry inference: ``python -m services.inference`` started as its own process on a free loopback
  port, called over gRPC (Predict, one image per request) by 1 client and by N concurrent clients,
  with dynamic batching on.

Unlike ``benchmarks.e2e`` there is no Envoy, gateway or NATS: the figures isolate the cost and the
gain of the service itself (gRPC hop, off-loop decoding, batching). Bounded: a fixed number of
requests per row and a start-up deadline; about 30-60 s on 2 CPU cores. Not a test: nothing asserts
a time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import torch

from benchmarks.e2e import MODEL, Result, cat_jpeg, measure, raw_model
from devstack.infra import free_port
from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common.probe import is_serving

START_DEADLINE_S = 120


@contextmanager
def inference_process(max_batch_size: int, max_batch_delay_ms: float) -> Iterator[str]:
    """Runs ``python -m services.inference`` on a free port; yields its target once SERVING."""
    port = free_port()
    env = {
        **os.environ,
        "FERRY_INFERENCE_GRPC_PORT": str(port),
        "FERRY_INFERENCE_METRICS_PORT": "0",
        "FERRY_INFERENCE_MAX_BATCH_SIZE": str(max_batch_size),
        "FERRY_INFERENCE_MAX_BATCH_DELAY_MS": str(max_batch_delay_ms),
        "FERRY_INFERENCE_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.inference"], env=env)
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not is_serving(target, timeout_s=1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"inference did not become SERVING (exit code {process.poll()})")
            time.sleep(0.2)
        yield target
    finally:
        process.terminate()
        process.wait(timeout=30)


class PredictCall:
    """One Predict of one image, with a deadline; records each answer's batch size."""

    def __init__(self, stub: inference_service_pb2_grpc.InferenceServiceStub, image: bytes) -> None:
        self._stub = stub
        self._request = inference_service_pb2.PredictRequest(
            model=MODEL, inputs=[types_pb2.Input(image=types_pb2.Image(content=image))], top_k=5
        )
        self.batch_sizes: list[int] = []

    def __call__(self) -> None:
        result = self._stub.Predict(self._request, timeout=60).results[0]
        if result.HasField("error"):
            raise RuntimeError(result.error.message)
        self.batch_sizes.append(result.timing.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=120, help="requests per measurement (bounded)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the batched row")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    requests = max(10, min(args.requests, 1000))
    image = cat_jpeg()

    results: list[Result] = [raw_model(image, requests)]
    mean_batch: dict[str, float] = {}
    with inference_process(args.max_batch_size, args.max_batch_delay_ms) as target:
        with grpc.insecure_channel(target) as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            for clients in (1, args.clients):
                call = PredictCall(stub, image)
                result = measure(f"Ferry inference gRPC, {clients} client(s)", call, requests, clients)
                mean_batch[result.name] = sum(call.batch_sizes) / len(call.batch_sizes)
                results.append(result)

    raw = results[0].images_per_s
    device = "cuda" if torch.cuda.is_available() else f"cpu, torch {torch.get_num_threads()} threads"
    print(
        f"\n{MODEL}, one 451x300 JPEG per request, {requests} requests per row, device {device}, "
        f"max_batch_size {args.max_batch_size}, max_batch_delay_ms {args.max_batch_delay_ms:g}"
    )
    print(f"{'setup':<36} {'img/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'mean batch':>10} {'Ferry/raw':>9}")
    for r in results:
        batch = f"{mean_batch[r.name]:.1f}" if r.name in mean_batch else "1.0"
        print(
            f"{r.name:<36} {r.images_per_s:>7.1f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {batch:>10}"
            f" {r.images_per_s / raw:>8.2f}x"
        )


if __name__ == "__main__":
    main()
