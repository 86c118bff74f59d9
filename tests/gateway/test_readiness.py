"""The gateway waits for its dependencies' gRPC health before it reports SERVING itself."""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.channels import open_channel
from services.gateway.readiness import wait_serving
from tests.gateway.servers import serving


async def test_waits_until_the_dependency_is_serving() -> None:
    checks = health.aio.HealthServicer()
    await checks.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    async with serving(lambda s: health_pb2_grpc.add_HealthServicer_to_server(checks, s)) as target:
        channel = open_channel(target, 1024 * 1024)
        waiting = asyncio.create_task(wait_serving(channel, "inference", target, timeout_s=60))
        await asyncio.sleep(0.6)  # at least one NOT_SERVING answer
        assert not waiting.done()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        await waiting
        await channel.close()


async def test_gives_up_with_a_message_naming_the_setting() -> None:
    async with serving(lambda s: None) as target:
        pass  # nothing listens there any more
    channel = open_channel(target, 1024 * 1024)
    with pytest.raises(TimeoutError) as caught:
        await wait_serving(channel, "store", target, timeout_s=0.5)
    assert f"store at {target} was not SERVING" in str(caught.value)
    assert "FERRY_GATEWAY_STORE_TARGET" in str(caught.value)
    await channel.close()
