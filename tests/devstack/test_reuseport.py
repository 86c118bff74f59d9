"""What a surge restart relies on: a replacement binds the same gRPC and metrics ports as the old."""

from __future__ import annotations

import urllib.request

import grpc

from devstack.infra import free_port
from services.common.channels import server_options
from services.common.metrics import start_metrics_server


async def test_two_grpc_servers_bind_one_port_with_ferrys_options() -> None:
    port = free_port()
    old, new = (grpc.aio.server(options=server_options(1 << 20)) for _ in range(2))
    try:
        assert old.add_insecure_port(f"127.0.0.1:{port}") == port
        await old.start()
        assert new.add_insecure_port(f"127.0.0.1:{port}") == port
        await new.start()
    finally:
        await new.stop(None)
        await old.stop(None)


def test_two_metrics_servers_bind_one_port() -> None:
    port = free_port()
    old = start_metrics_server("127.0.0.1", port)
    new = start_metrics_server("127.0.0.1", port)
    assert old is not None and new is not None
    try:
        old.shutdown()
        old.server_close()  # the old process exits: the replacement answers alone
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            assert b"python_info" in answer.read()
    finally:
        new.shutdown()
        new.server_close()


def test_metrics_off_on_port_zero() -> None:
    assert start_metrics_server("127.0.0.1", 0) is None
