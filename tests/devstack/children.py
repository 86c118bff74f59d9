"""Tiny real child processes for the supervisor's tests (run as ``python -m tests.devstack.children``).

``health PORT``: a gRPC health server that binds PORT as Ferry's services do (SO_REUSEPORT),
logs ``started: pid N`` once SERVING, and on SIGTERM logs ``stopping pid N`` and drains.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.channels import server_options


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


if __name__ == "__main__":
    if sys.argv[1] == "health":
        asyncio.run(serve_health(int(sys.argv[2])))
