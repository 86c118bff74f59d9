"""What the gateway and overload benchmarks share: a stack of their own and a key out of the way."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from devstack.infra import free_port
from devstack.settings import StackSettings
from devstack.stack import Endpoints, LocalStack
from ferry.admin.v1 import key_service_pb2, key_service_pb2_grpc

ADMIN_KEY = "bench-admin"
"""The stack's development key: it has the admin scope."""


@contextmanager
def local_stack(prefix: str, gateways: int = 1) -> Iterator[Endpoints]:
    """A local stack (``gateways`` gateway processes) on free ports in a temporary folder, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as state:
        stack = LocalStack(
            StackSettings(
                state_dir=Path(state),
                http_port=free_port(),
                free_ports=True,
                dev_api_key=ADMIN_KEY,
                gateways=gateways,
            )
        )
        try:
            yield stack.start()
        finally:
            stack.stop()


async def unthrottled_key(target: str, scopes: Sequence[str]) -> str:
    """A new key of tenant "bench" whose rate limit a benchmark never reaches."""
    async with grpc.aio.insecure_channel(target) as channel:
        created: key_service_pb2.CreateKeyResponse = await key_service_pb2_grpc.KeyServiceStub(
            channel
        ).CreateKey(
            key_service_pb2.CreateKeyRequest(
                tenant="bench", scopes=scopes, rate_per_s=1_000_000, burst=1_000_000
            ),
            metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
        )
    return created.api_key
