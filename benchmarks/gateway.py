"""Gateway efficiency: CPU the gateway process spends per call, and calls/s, on a real local stack.

``python -m benchmarks.gateway`` (or ``make bench-gateway``) starts its own stack on free ports in
a temporary folder, makes an API key with a rate limit high enough not to interfere, and sends
``ListModels`` and ``GetModel`` calls from many concurrent asyncio gRPC clients straight to the
gateway's port (Envoy is not what is measured). The gateway's CPU time is read from
``/proc/<pid>/stat`` before and after, so the figure is the gateway's own work per call, whatever
the clients cost. Every call goes through the full chain: readiness gate, span, metrics, access
log, authentication, scopes, rate limit, in-flight bound and default deadline.

Not a test: nothing here asserts a time. On a shared machine, note the load (``uptime``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from benchmarks.local import local_stack, unthrottled_key
from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def measure(
    target: str, pid: int, name: str, call: Callable[[Any], Any], requests: int, clients: int
) -> tuple[float, float]:
    """Runs ``requests`` calls over ``clients`` coroutines; returns (gateway CPU ms per call, calls/s)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)

        async def client(count: int) -> None:
            for _ in range(count):
                await call(stub)

        await client(200)  # warm: connections, caches, the catalog
        cpu, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(client(requests // clients) for _ in range(clients)))
        wall, used = time.perf_counter() - started, cpu_seconds(pid) - cpu
    done = requests // clients * clients
    print(f"  {name:<11} {done:>6} calls  {used / done * 1000:6.3f} ms CPU/call  {done / wall:7.0f} calls/s")
    return used / done * 1000, done / wall


async def run(target: str, pid: int, requests: int, clients: int) -> None:
    key = await unthrottled_key(target, ["read"])
    metadata = (("authorization", f"Bearer {key}"),)
    list_request = model_service_pb2.ListModelsRequest()
    get_request = model_service_pb2.GetModelRequest(name="models/efficientnet-lite0")
    print(f"gateway pid {pid}, {clients} concurrent clients, load before: {os.getloadavg()[0]:.2f}")
    await measure(
        target, pid, "ListModels", lambda s: s.ListModels(list_request, metadata=metadata), requests, clients
    )
    await measure(
        target, pid, "GetModel", lambda s: s.GetModel(get_request, metadata=metadata), requests, clients
    )
    print(f"load after: {os.getloadavg()[0]:.2f} (others share this machine's cores)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    with local_stack("ferry-bench-gateway-") as endpoints:
        target = f"127.0.0.1:{endpoints.services['gateway']['grpc_port']}"
        asyncio.run(run(target, endpoints.pids["gateway"], args.requests, args.clients))


if __name__ == "__main__":
    main()
