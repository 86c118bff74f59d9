"""``python -m services.jobs`` as users run it: env settings, health, runs items, stops, and dies.

Health is read the way a deployment reads it (gRPC health on the runner's port), and the crash
test kills the real process at the failpoint fault tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.errors import NotFoundError

from devstack.health import wait_grpc_serving
from devstack.infra import ManagedProcess, free_port
from ferry.predictions.v1 import prediction_pb2
from services.common.failpoints import ENV as FAILPOINTS_ENV
from services.common.failpoints import EXIT_CODE as FAILPOINT_EXIT_CODE
from services.common.ids import item_record_id
from services.jobs.runner import AFTER_RECORD_PUBLISH
from services.jobs.service import QUEUE_SERVICE
from tests.jobs.conftest import WAIT_S, Harness
from tests.jobs.doubles import FailureInjectingInference
from tests.jobs.test_delivery import by_name

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def start_runner_process(
    harness: Harness, inference: FailureInjectingInference, logs: Path, **env: str
) -> tuple[ManagedProcess, str]:
    """Starts ``python -m services.jobs`` on the harness's consumer; returns it and its gRPC target."""
    grpc_port = free_port()
    s = harness.settings
    base = {
        "FERRY_JOBS_GRPC_PORT": str(grpc_port),
        "FERRY_JOBS_METRICS_PORT": str(free_port()),
        "FERRY_JOBS_NATS_URL": s.nats_url,
        "FERRY_JOBS_INFERENCE_TARGET": inference.target,
        "FERRY_JOBS_CONSUMER_NAME": s.consumer_name,
        "FERRY_JOBS_SUBJECT_FILTER": s.subject_filter,
        "FERRY_JOBS_BACKOFF_BASE_S": "0.01",
    }
    argv = [".venv/bin/python", "-m", "services.jobs"]
    return ManagedProcess.start("jobs", argv, logs, {**base, **env}), f"127.0.0.1:{grpc_port}"


@contextlib.asynccontextmanager
async def stops_cleanly(process: ManagedProcess) -> AsyncIterator[None]:
    """Runs the block, then stops ``process`` (SIGTERM) and checks that it exited 0."""
    try:
        yield
    finally:
        code = await asyncio.to_thread(process.stop)
    assert code == 0, process.log_tail()


async def health_of(target: str, service: str = "") -> int | None:
    """The runner's overall health status (or ``service``'s), or None while it does not answer."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
        except grpc.aio.AioRpcError:
            return None
    return int(answer.status)


async def wait_health(target: str, process: ManagedProcess, wanted: int) -> None:
    deadline = time.monotonic() + 60
    while (status := await health_of(target)) != wanted:
        assert process.alive(), process.log_tail()
        assert time.monotonic() < deadline, f"health {status}, not {wanted}: {process.log_tail()}"
        await asyncio.sleep(0.1)


async def assert_an_item_runs(harness: Harness, content: bytes) -> None:
    """Queues one item of a new job and checks the process under test ran and recorded it."""
    job = uuid.uuid4()
    await harness.publish_item(job, 0, content)
    await harness.wait_drained(await harness.work_stream_last_seq())
    [record] = await harness.records(job)
    assert record.name == f"predictions/{item_record_id(job, 0)}"
    assert record.state == prediction_pb2.PREDICTION_STATE_SUCCEEDED


async def test_module_serves_health_runs_items_and_stops_cleanly(
    harness: Harness, inference: FailureInjectingInference, tmp_path: Path
) -> None:
    process, target = start_runner_process(harness, inference, tmp_path)
    async with stops_cleanly(process):
        await asyncio.to_thread(wait_grpc_serving, target, process, 60)
        # SERVING means the durable consumer exists, with the settings it was given.
        assert (await harness.consumer()).config.filter_subject == harness.settings.subject_filter

        await assert_an_item_runs(harness, b"via the real process")
    assert "stopped" in process.log_tail()


async def test_health_follows_inference(
    harness: Harness, inference: FailureInjectingInference, tmp_path: Path
) -> None:
    await inference.stop()
    process, target = start_runner_process(harness, inference, tmp_path)
    async with stops_cleanly(process):
        await wait_health(target, process, NOT_SERVING)  # started without its dependency
        await inference.start()
        await wait_health(target, process, SERVING)
        assert await health_of(target, QUEUE_SERVICE) == SERVING
        await inference.stop()
        await wait_health(target, process, NOT_SERVING)
        assert "waiting for a dependency (inference: " in process.log_tail()
        # The runners pause, but the job queue needs no inference: the gateway can still submit.
        assert await health_of(target, QUEUE_SERVICE) == SERVING
        await inference.start()
        await wait_health(target, process, SERVING)


async def health_code(target: str, service: str) -> grpc.StatusCode:
    """How the process's health service answers a check of ``service``."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5.0
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def test_a_queue_process_serves_the_api_without_inference_and_runs_no_items(
    harness: Harness, inference: FailureInjectingInference, tmp_path: Path
) -> None:
    await inference.stop()
    process, target = start_runner_process(harness, inference, tmp_path, FERRY_JOBS_ROLES="queue")
    async with stops_cleanly(process):
        # Serving with inference down: the API needs NATS (and store) only.
        await wait_health(target, process, SERVING)
        assert await health_of(target, QUEUE_SERVICE) == SERVING
        await inference.start()
        await harness.publish_item(uuid.uuid4(), 0, b"left for a runner")
        await asyncio.sleep(2.0)
        assert inference.seen(b"left for a runner") == 0
        with pytest.raises(NotFoundError):  # no runner here made the work consumer
            await harness.consumer()
    assert "started: ferry.jobqueue.v1.JobQueueService" in process.log_tail()


async def test_a_runner_process_runs_items_and_offers_no_job_queue(
    harness: Harness, inference: FailureInjectingInference, tmp_path: Path
) -> None:
    process, target = start_runner_process(harness, inference, tmp_path, FERRY_JOBS_ROLES="runner")
    async with stops_cleanly(process):
        await asyncio.to_thread(wait_grpc_serving, target, process, 60)
        # The gateway balances over the JobQueueService health name: a runner must not offer it.
        assert await health_code(target, QUEUE_SERVICE) == grpc.StatusCode.NOT_FOUND
        await assert_an_item_runs(harness, b"run by the runner alone")
    assert "started: (health only)" in process.log_tail()


async def test_runner_killed_between_record_and_ack_leaves_no_duplicate_record(
    harness: Harness, inference: FailureInjectingInference, tmp_path: Path
) -> None:
    # Store ingests exactly the record events asserted on here (and drops a duplicate id with
    # ON CONFLICT DO NOTHING besides), so one event per item means one row per item in Postgres.
    harness.configure(ack_wait_s=2.0)
    env = {FAILPOINTS_ENV: AFTER_RECORD_PUBLISH, "FERRY_JOBS_ACK_WAIT_S": "2"}
    process, _ = start_runner_process(harness, inference, tmp_path, **env)
    job = uuid.uuid4()
    try:
        await harness.publish_item(job, 0, b"dies after recording")
        code = await asyncio.to_thread(process.popen.wait, WAIT_S)
    finally:
        await asyncio.to_thread(process.stop)
    assert code == FAILPOINT_EXIT_CODE, process.log_tail()
    assert f"failpoint {AFTER_RECORD_PUBLISH} reached" in process.log_tail()
    assert len(await harness.records(job)) == 1  # recorded...
    assert (await harness.consumer()).num_ack_pending == 1  # ...but never acked

    # A fresh runner gets the item once its ack wait runs out, runs it again and records it
    # under the same Nats-Msg-Id, which JetStream drops.
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())
    records = by_name(await harness.records(job))
    assert [r.state for r in records.values()] == [prediction_pb2.PREDICTION_STATE_SUCCEEDED]
    assert inference.seen(b"dies after recording") == 2
