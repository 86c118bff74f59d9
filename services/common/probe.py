"""``python -m services.common.probe HOST:PORT``: exit 0 when the gRPC server there is SERVING.

Containers use it as their healthcheck (the images carry no grpc_health_probe binary).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def is_serving(target: str, timeout_s: float = 2.0) -> bool:
    """Asks ``target``'s gRPC health service whether it is SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(  # type: ignore[attr-defined]  # the published stubs omit the methods
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m services.common.probe HOST:PORT")
    sys.exit(0 if is_serving(sys.argv[1]) else 1)
