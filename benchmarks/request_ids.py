"""What remembering a request_id costs a Predict: calls with one against calls without, in one run.

``python -m benchmarks.request_ids [--rounds 300] [--block 50]`` starts a local stack of its own
and sends the P1 request (the 451x300 JPEG, efficientnet-lite0) to the gateway's gRPC port, one
call at a time:

* latency: ``--rounds`` pairs, each a call with a fresh ``request_id`` and one without, in a random
  order; the median of the paired differences is what the claim adds (it runs beside inference:
  ``services/gateway/request_ids.py``);
* a retry: a call repeated with the same ``request_id`` (the claim finds the key and compares);
* CPU: blocks of ``--block`` calls with and without a ``request_id`` in turn; the gateway's and
  nats-server's CPU per call from ``/proc``, each kind's blocks summed;
* the digest alone, of the P1 image and of a 4 MiB one, in this process.

A call without a ``request_id`` takes the path every call took before the claim existed, so the
two columns are before and after on the same build, alternated in one window. Prints
/proc/loadavg before and after. Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid

import grpc

from benchmarks.cpu import cpu_seconds, load_average
from benchmarks.e2e import cat_jpeg
from benchmarks.local import local_stack, unthrottled_key
from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.gateway.request_ids import digest

MODEL = "models/efficientnet-lite0"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def digest_us(content: bytes, repeats: int = 200) -> float:
    """Median µs of the digest of one Predict of ``content``, as the gateway takes it."""
    item = types_pb2.Input(image=types_pb2.Image(content=content))
    spent = []
    for _ in range(repeats):
        started = time.perf_counter()
        digest("predict", ("efficientnet-lite0", "", 5, item))
        spent.append((time.perf_counter() - started) * 1e6)
    return _median(spent)


async def run(target: str, pids: dict[str, int], rounds: int, block: int) -> None:
    key = await unthrottled_key(target, ["predict"])
    metadata = (("authorization", f"Bearer {key}"),)
    image = cat_jpeg()
    print(f"load before: {load_average()}")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)

        async def call(request_id: str = "") -> float:
            request = model_service_pb2.PredictRequest(
                model=MODEL, image=types_pb2.Image(content=image), request_id=request_id
            )
            started = time.perf_counter()
            await stub.Predict(request, metadata=metadata)
            return (time.perf_counter() - started) * 1000

        for _ in range(20):  # warm-up: connections, the model's first passes, the bucket
            await call(), await call(str(uuid.uuid4()))

        without, with_id, paired, retried, retry_paired = [], [], [], [], []
        for _ in range(rounds):
            first_plain = random.random() < 0.5
            if first_plain:
                plain = await call()
                claimed = await call(str(uuid.uuid4()))
            else:
                claimed = await call(str(uuid.uuid4()))
                plain = await call()
            without.append(plain)
            with_id.append(claimed)
            paired.append(claimed - plain)
        for _ in range(max(1, rounds // 3)):
            request_id = str(uuid.uuid4())
            await call(request_id)
            again = await call(request_id)  # the retry: the key exists, its digest is compared
            plain = await call()
            retried.append(again)
            retry_paired.append(again - plain)

        spent = {"without": {"gateway": 0.0, "nats": 0.0}, "with": {"gateway": 0.0, "nats": 0.0}}
        for n in range(6):  # blocks in turn: ABABAB
            kind = "without" if n % 2 == 0 else "with"
            before = cpu_seconds(pids)
            for _ in range(block):
                await call(str(uuid.uuid4()) if kind == "with" else "")
            after = cpu_seconds(pids)
            for name in ("gateway", "nats"):
                spent[kind][name] += (after[name] - before[name]) * 1000 / (3 * block)

    print(f"load after: {load_average()} (cores: {os.cpu_count()}; others share them)")
    print(f"\nPredict, one call at a time, {rounds} pairs (ms, medians):")
    print(f"  without request_id {_median(without):7.2f}")
    print(f"  with a new one     {_median(with_id):7.2f}   paired difference {_median(paired):+.2f}")
    print(f"  a retry (same id)  {_median(retried):7.2f}   paired difference {_median(retry_paired):+.2f}")
    print(f"\nCPU per call, {3 * block} calls each, blocks alternated (ms):")
    for kind, by in spent.items():
        print(f"  {kind:8} request_id: gateway {by['gateway']:.3f}, nats-server {by['nats']:.3f}")
    added = {name: spent["with"][name] - spent["without"][name] for name in ("gateway", "nats")}
    print(f"  added: gateway {added['gateway']:+.3f}, nats-server {added['nats']:+.3f}")
    print(
        f"\ndigest of one Predict: P1 image ({len(image)} B) {digest_us(image):.1f} µs, "
        f"4 MiB {digest_us(os.urandom(4 << 20), 20):.0f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--block", type=int, default=50)
    args = parser.parse_args()
    with local_stack("ferry-bench-request-ids-") as endpoints:
        target = f"127.0.0.1:{endpoints.services['gateway']['grpc_port']}"
        pids = {"gateway": endpoints.pids["gateway"], "nats": endpoints.pids["nats"]}
        asyncio.run(run(target, pids, args.rounds, args.block))


if __name__ == "__main__":
    main()
