"""Channels to several replicas: one target string, round robin over the replicas that serve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.channels import grpc_target, open_channel
from services.gateway.settings import GatewaySettings
from services.jobs.settings import JobsSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize(
    ("given", "target"),
    [
        ("127.0.0.1:50052", "127.0.0.1:50052"),
        ("inference:50052", "inference:50052"),
        ("dns:///inference:50052", "dns:///inference:50052"),
        ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("localhost:1,10.0.0.2:2", "ipv4:127.0.0.1:1,10.0.0.2:2"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
        ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
    ],
)
def test_a_list_of_replicas_becomes_one_target(given: str, target: str) -> None:
    assert grpc_target(given) == target


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("inference-a:1,inference-b:2", "IP:port"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,127.0.0.2", "no port"),
        (" , ", "no target"),
    ],
)
def test_a_list_that_cannot_be_balanced_is_refused_with_advice(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        grpc_target(given)


def test_settings_take_the_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_GATEWAY_INFERENCE_TARGET", "127.0.0.1:50052,127.0.0.1:50062")
    monkeypatch.setenv("FERRY_JOBS_INFERENCE_TARGET", "127.0.0.1:50052")
    assert GatewaySettings().inference_target == "ipv4:127.0.0.1:50052,127.0.0.1:50062"
    assert JobsSettings().inference_target == "127.0.0.1:50052"
    monkeypatch.setenv("FERRY_JOBS_INFERENCE_TARGET", "a:1,b:2")
    with pytest.raises(ValueError, match="inference_target"):
        JobsSettings()


class CountingHealth(health.aio.HealthServicer):
    """A replica's health service that counts the Check calls it answered."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    async def Check(self, request: Any, context: Any) -> Any:
        self.checks += 1
        return await super().Check(request, context)


@asynccontextmanager
async def replica() -> AsyncIterator[tuple[str, CountingHealth, grpc.aio.Server]]:
    server = grpc.aio.server()
    servicer = CountingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", SERVING)
    try:
        yield f"127.0.0.1:{port}", servicer, server
    finally:
        await server.stop(None)


async def checks(channel: grpc.aio.Channel, calls: int) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(calls):
        await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5, wait_for_ready=True)  # type: ignore[attr-defined]


async def test_calls_spread_over_serving_replicas_and_skip_the_others() -> None:
    async with AsyncExitStack() as stack:
        (a, health_a, server_a) = await stack.enter_async_context(replica())
        (b, health_b, _) = await stack.enter_async_context(replica())
        channel = open_channel(f"{a},{b}", 1024 * 1024)
        stack.push_async_callback(channel.close)

        await checks(channel, 40)
        assert health_a.checks >= 10 and health_b.checks >= 10, (health_a.checks, health_b.checks)

        # A replica that says NOT_SERVING (loading, draining) leaves the rotation.
        await health_b.set("", NOT_SERVING)
        await asyncio.sleep(0.5)  # the Watch stream delivers the change
        before = health_b.checks
        await checks(channel, 20)
        assert health_b.checks == before

        # Back to SERVING: it gets calls again; the other one stops: calls keep answering.
        await health_b.set("", SERVING)
        await server_a.stop(None)
        before = health_b.checks
        await checks(channel, 20)
        assert health_b.checks == before + 20


async def test_a_channel_can_balance_by_one_services_health_instead_of_the_whole_servers() -> None:
    # The gateway reaches the jobs service's queue while its runners wait for inference: each
    # replica's overall health ("") says NOT_SERVING, its JobQueueService health SERVING.
    queue = "ferry.jobqueue.v1.JobQueueService"
    async with AsyncExitStack() as stack:
        (a, health_a, _) = await stack.enter_async_context(replica())
        (b, health_b, _) = await stack.enter_async_context(replica())
        for servicer in (health_a, health_b):
            await servicer.set("", NOT_SERVING)
            await servicer.set(queue, SERVING)
        await health_b.set(queue, NOT_SERVING)  # this one's queue is down: skipped
        channel = open_channel(f"{a},{b}", 1024 * 1024, health_service=queue)
        stack.push_async_callback(channel.close)

        await checks(channel, 20)
        assert (health_a.checks, health_b.checks) == (20, 0)

        by_overall = open_channel(f"{a},{b}", 1024 * 1024)  # "": no replica serves
        stack.push_async_callback(by_overall.close)
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await health_pb2_grpc.HealthStub(by_overall).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=""), timeout=1, wait_for_ready=True
            )
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
