"""End-to-end benchmark: Ferry through Envoy (REST and gRPC) vs the raw model in-process.

``python -m benchmarks.e2e`` (or ``make bench``) starts its own local stack on free ports in a
temporary folder, so it never touches a running ``ferry up``. It prints images/s, p50 and p99 for:

* raw: the same model code (ModelRunner, same preprocessing), batch 1, in this process;
* Ferry REST and gRPC through Envoy, 1 client (the per-request overhead) and N clients (batching).

Bounded: each measurement runs a fixed number of requests; the whole run takes about a minute on
2 CPU cores. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from skimage import data as skimage_data

from benchmarks import raw
from devstack.infra import free_port
from devstack.settings import StackSettings
from devstack.stack import LocalStack
from ferry_client import FerryClient

MODEL = "efficientnet-lite0"


@dataclass
class Result:
    name: str
    images_per_s: float
    p50_ms: float
    p99_ms: float


def cat_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def measure(name: str, call: Callable[[], object], requests: int, clients: int) -> Result:
    """Runs ``requests`` calls spread over ``clients`` threads; returns throughput and latency."""
    latencies: list[float] = []

    def one() -> None:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)

    for _ in range(min(3, requests)):  # warm connections and caches, unmeasured
        call()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(one) for _ in range(requests)]:
            future.result()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return Result(
        name,
        requests / elapsed,
        statistics.median(ordered) * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def raw_model(image: bytes, requests: int) -> Result:
    runner = raw.load(MODEL)
    runner.warm_up(batches=2, batch_size=1)
    return measure(
        "raw model in-process, batch 1",
        lambda: runner.run([raw.item(runner, image)]),
        requests,
        clients=1,
    )


def rest_call(
    base_url: str, api_key: str, image: bytes, path: str = f"/v1/models/{MODEL}:predict"
) -> Callable[[], object]:
    """One JSON POST of a base64 image to ``path`` (Ferry's predict; a peer's endpoint in P4)."""
    body = json.dumps({"image": {"content": base64.b64encode(image).decode()}, "top_k": 5}).encode()
    url = f"{base_url}{path}"

    def call() -> object:
        request = urllib.request.Request(
            url, data=body, headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.read()

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=120, help="requests per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the batched runs")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    image = cat_jpeg()

    results = [raw_model(image, args.requests)]
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as state:
        stack = LocalStack(
            StackSettings(state_dir=Path(state), http_port=free_port(), free_ports=True, dev_api_key="bench")
        )
        try:
            endpoints = stack.start()
            rest = rest_call(endpoints.http_url, "bench", image)
            with FerryClient(endpoints.grpc_target, "bench") as ferry:
                grpc_call = lambda: ferry.predict(image)  # noqa: E731
                results += [
                    measure("Ferry REST via Envoy, 1 client", rest, args.requests, 1),
                    measure("Ferry gRPC via Envoy, 1 client", grpc_call, args.requests, 1),
                    measure(
                        f"Ferry REST via Envoy, {args.clients} clients", rest, args.requests, args.clients
                    ),
                    measure(
                        f"Ferry gRPC via Envoy, {args.clients} clients",
                        grpc_call,
                        args.requests,
                        args.clients,
                    ),
                ]
        finally:
            stack.stop()

    raw = results[0].images_per_s
    device = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    print(f"\n{MODEL}, one 451x300 JPEG, {args.requests} requests per row, device {device}")
    print(f"{'setup':<38} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs raw':>7}")
    for r in results:
        print(
            f"{r.name:<38} {r.images_per_s:>8.1f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f}"
            f" {r.images_per_s / raw:>6.2f}x"
        )


if __name__ == "__main__":
    main()
