"""Tiny real child processes for the supervisor's tests (run as ``python -m tests.devstack.children``).

``health PORT``: a gRPC health server that binds PORT as Ferry's services do (SO_REUSEPORT),
logs ``started: pid N`` once SERVING, and on SIGTERM logs ``stopping pid N`` and drains.

``service BARRIER N``: an empty Ferry service under ``services.common.runtime.run_service`` (its
settings from ``FERRY_*``: port, shutdown delay). While it shuts down it writes its pid into the
folder BARRIER and waits up to 20 s for N pids there, then logs ``others stopping too`` or
``stopping alone``: whether N processes were told to stop at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.channels import server_options
from services.common.readiness import Readiness
from services.common.runtime import run_service
from services.common.settings import ServiceSettings


async def serve_health(port: int) -> None:
    server = grpc.aio.server(options=server_options(1 << 20))
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"started: pid {os.getpid()}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(f"stopping pid {os.getpid()}", flush=True)
    await servicer.enter_graceful_shutdown()
    await server.stop(1)


class BarrierService:
    """A Ferry service with no API whose last cleanup waits for the other processes of a group."""

    name = "child"

    def __init__(self, barrier: Path, count: int) -> None:
        self.barrier, self.count = barrier, count

    def service_names(self) -> Sequence[str]:
        return []

    def register(self, server: grpc.aio.Server) -> None:
        pass

    async def start(self, stack: AsyncExitStack, readiness: Readiness) -> None:
        stack.push_async_callback(self._meet)

    async def _meet(self) -> None:
        (self.barrier / str(os.getpid())).touch()
        for _ in range(200):
            if len(list(self.barrier.iterdir())) >= self.count:
                print("others stopping too", flush=True)
                return
            await asyncio.sleep(0.1)
        print("stopping alone", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "health":
        asyncio.run(serve_health(int(sys.argv[2])))
    elif sys.argv[1] == "service":
        service = BarrierService(Path(sys.argv[2]), int(sys.argv[3]))
        asyncio.run(run_service(service, ServiceSettings()))
