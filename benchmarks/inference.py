"""Inference-service benchmark: the raw model in-process vs Ferry's inference service over gRPC.

``python -m benchmarks.inference`` measures, in one run on the same machine:

* raw: the same model code (ModelRunner, same preprocessing), batch 1, sequential, in this process;
* Ferry inference: ``python -m services.inference`` started as its own process on a free loopback
  port, called over gRPC (Predict, one image per request) by 1 client and by N concurrent clients,
  with dynamic batching on (batch size as the service chooses it, unless given);
* raw best: the same model's forward passes in-process at batch 2, 4 and 8, the best of them (the
  throughput ceiling a batching server aims for).

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
from services.inference.models.registry import resolve
from services.inference.runner import Item, ModelRunner, resolve_device

START_DEADLINE_S = 120


@contextmanager
def inference_process(settings: dict[str, str]) -> Iterator[str]:
    """Runs ``python -m services.inference`` on a free port; yields its target once SERVING.

    Args:
        settings: ``FERRY_INFERENCE_<FIELD>`` values by field (for example ``MAX_BATCH_SIZE``);
            fields left out keep the service's defaults.
    """
    port = free_port()
    env = {
        **os.environ,
        "FERRY_INFERENCE_GRPC_PORT": str(port),
        "FERRY_INFERENCE_METRICS_PORT": "0",
        "FERRY_INFERENCE_LOG_LEVEL": "WARNING",
        **{f"FERRY_INFERENCE_{field}": value for field, value in settings.items()},
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


def raw_best(image: bytes, requests: int, sizes: tuple[int, ...] = (2, 4, 8)) -> Result:
    """The raw model's best throughput over batch sizes: the ceiling a batching server aims for.

    Forward passes only (the image is preprocessed once), sequential, in this process.
    """
    spec = resolve([MODEL])[0]
    runner = ModelRunner(spec, resolve_device("auto"))
    item = Item(spec.preprocess(image), 5)
    results: list[Result] = []
    for size in sizes:
        runner.warm_up(batches=2, batch_size=size)
        batch = [item] * size
        timed = measure("", lambda batch=batch: runner.run(batch), max(3, requests // size), clients=1)
        name = f"raw forward only, best batch ({size})"
        results.append(Result(name, timed.images_per_s * size, timed.p50_ms, timed.p99_ms))
    return max(results, key=lambda r: r.images_per_s)


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
    parser.add_argument("--max-batch-size", type=int, help="default: chosen by the service at warm-up")
    parser.add_argument("--max-batch-delay-ms", type=float, help="default: the service's (0)")
    parser.add_argument("--torch-threads", type=int, help="default: the service's")
    parser.add_argument("--decode-threads", type=int, help="default: the service's")
    args = parser.parse_args()
    requests = max(10, min(args.requests, 1000))
    image = cat_jpeg()
    settings = {
        field: str(value)
        for field, value in (
            ("MAX_BATCH_SIZE", args.max_batch_size),
            ("MAX_BATCH_DELAY_MS", args.max_batch_delay_ms),
            ("TORCH_THREADS", args.torch_threads),
            ("DECODE_THREADS", args.decode_threads),
        )
        if value is not None
    }

    # Both raw rows first, in this process, before the service starts: they never share the CPU.
    results: list[Result] = [raw_model(image, requests), raw_best(image, requests)]
    mean_batch: dict[str, float] = {}
    with inference_process(settings) as target:
        with grpc.insecure_channel(target) as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            [model] = stub.ListModels(inference_service_pb2.ListModelsRequest(), timeout=10).models
            batch_size = model.max_batch_size
            for clients in (1, args.clients):
                call = PredictCall(stub, image)
                result = measure(f"Ferry inference gRPC, {clients} client(s)", call, requests, clients)
                mean_batch[result.name] = sum(call.batch_sizes) / len(call.batch_sizes)
                results.append(result)

    raw, best = results[0], results[1]
    device = "cuda" if torch.cuda.is_available() else f"cpu, torch {torch.get_num_threads()} threads"
    print(
        f"\n{MODEL}, one 451x300 JPEG per request, {requests} requests per row, device {device}, "
        f"service batch size {batch_size}, settings {settings or 'defaults'}"
    )
    print(
        f"{'setup':<36} {'img/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'mean batch':>10}"
        f" {'vs raw b1':>9} {'vs raw best':>11}"
    )
    for r in results:
        batch = f"{mean_batch[r.name]:.1f}" if r.name in mean_batch else "-"
        print(
            f"{r.name:<36} {r.images_per_s:>7.1f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {batch:>10}"
            f" {r.images_per_s / raw.images_per_s:>8.2f}x {r.images_per_s / best.images_per_s:>10.2f}x"
        )
    single = results[2]
    print(
        f"\n1 client p50: {single.p50_ms:.1f} ms through the service vs {raw.p50_ms:.1f} ms in-process "
        f"(overhead {single.p50_ms - raw.p50_ms:+.1f} ms: gRPC hop, decode hand-off, queue)"
    )


if __name__ == "__main__":
    main()
