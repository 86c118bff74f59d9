"""Fixtures for the runner's tests: real JetStream, a failure-injection inference double, a harness;
and the result files' stores (the Object Store, and S3 on moto's server)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import boto3
import nats
import pytest
from google.protobuf.message import DecodeError
from moto.server import ThreadedMotoServer
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, RawStreamMsg

from devstack.infra import free_port
from ferry.events.v1 import events_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common import messaging
from services.common.readiness import Readiness
from services.common.result_stores import ResultStore, result_store
from services.jobs.service import JobsService
from services.jobs.settings import JobsSettings
from tests.jobs.doubles import FailureInjectingInference

WAIT_S = 30.0


class Harness:
    """One test's runner setup: its own work subject and consumer, so tests never share work."""

    def __init__(self, js: JetStreamContext, nats_url: str, inference_target: str) -> None:
        self.js = js
        tag = uuid.uuid4().hex[:12]
        self.subject = messaging.job_items_subject(f"test{tag}")
        self.settings = JobsSettings(
            nats_url=nats_url,
            inference_target=inference_target,
            consumer_name=f"jobs-test-{tag}",
            subject_filter=self.subject,
            metrics_port=0,
            backoff_base_s=0.01,
            backoff_max_s=0.05,
            inference_timeout_s=5.0,
            publish_timeout_s=2.0,
            ack_wait_s=10.0,
            cancel_cache_s=0.0,
            # Notebook jobs too on subjects of their own (FERRY_WORK refuses overlapping consumers).
            notebook_subject=f"{self.subject}-notebooks",
            notebook_consumer=f"jobs-test-{tag}-notebooks",
        )
        self._stacks: list[AsyncExitStack] = []
        self.readiness: list[Readiness] = []

    def configure(self, **overrides: Any) -> None:
        """Changes settings for runners started after this call."""
        self.settings = self.settings.model_copy(update=overrides)

    async def start_runner(self) -> None:
        """Starts one more runner process's worth of service on the shared consumer."""
        stack = AsyncExitStack()
        await stack.__aenter__()
        self._stacks.append(stack)
        readiness = Readiness.started("jobs")
        self.readiness.append(readiness)
        await JobsService(self.settings).start(stack, readiness)

    async def stop_runners(self) -> None:
        """Stops every runner the way shutdown does: the exit stack closes."""
        while self._stacks:
            await self._stacks.pop().aclose()

    async def publish_item(
        self,
        job_id: uuid.UUID,
        index: int,
        content: bytes | types_pb2.Input,
        *,
        model: str = "efficientnet-lite0",
        top_k: int = 3,
        msg_id: str | None = None,
        generation: int = 0,
        subject: str | None = None,
    ) -> None:
        """Publishes a job item the way gateway does (Nats-Msg-Id ``{job}:{index}``, traceparent),
        on the harness's subject unless told another; ``content`` is an image's bytes or any Input."""
        item = events_pb2.JobItem(
            tenant="acme",
            job_id=str(job_id),
            item_index=index,
            model=model,
            top_k=top_k,
            input=content
            if isinstance(content, types_pb2.Input)
            else types_pb2.Input(image=types_pb2.Image(content=content)),
            generation=generation,
        )
        msg_id = msg_id or messaging.with_generation(f"{job_id}:{index}", generation)
        await messaging.publish(self.js, subject or self.subject, item, msg_id=msg_id)

    async def publish_raw(self, data: bytes) -> int:
        """Publishes arbitrary bytes to the work subject; returns the stream sequence."""
        ack = await self.js.publish(self.subject, data, headers={"Nats-Msg-Id": uuid.uuid4().hex})
        return int(ack.seq)

    async def consumer(self) -> ConsumerInfo:
        return await self.js.consumer_info(messaging.WORK_STREAM, self.settings.consumer_name)

    async def wait_drained(self, at_least_delivered: int) -> ConsumerInfo:
        """Waits until every work message was delivered and settled (acked or terminated)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            info = await self.consumer()
            done = info.num_pending == 0 and info.num_ack_pending == 0
            if done and (info.delivered.stream_seq or 0) >= at_least_delivered:
                return info
            assert time.monotonic() < deadline, f"work not drained in {WAIT_S}s: {info}"
            await asyncio.sleep(0.05)

    async def work_stream_last_seq(self) -> int:
        return int((await self.js.stream_info(messaging.WORK_STREAM)).state.last_seq)

    async def records(self, *job_ids: uuid.UUID) -> list[prediction_pb2.Prediction]:
        """Every record message in FERRY_EVENTS for these jobs, duplicates included, in stream order."""
        return [event.prediction for event, _ in await self.record_events(*job_ids)]

    async def record_events(
        self, *job_ids: uuid.UUID
    ) -> list[tuple[events_pb2.PredictionRecorded, dict[str, str]]]:
        """Like ``records``, as whole events with their headers (``Nats-Msg-Id``, ``traceparent``)."""
        jobs = {f"jobs/{j}" for j in job_ids}
        last = int((await self.js.stream_info(messaging.EVENTS_STREAM)).state.last_seq)
        config = ConsumerConfig(ack_policy=AckPolicy.NONE)
        sub = await self.js.pull_subscribe(
            messaging.PREDICTIONS_SUBJECT, stream=messaging.EVENTS_STREAM, config=config
        )
        found: list[tuple[events_pb2.PredictionRecorded, dict[str, str]]] = []
        try:
            seq = 0
            while seq < last:
                try:
                    msgs = await sub.fetch(256, timeout=1.0)
                except TimeoutError:
                    break  # nothing left on this subject (the rest of the stream is job events)
                for msg in msgs:
                    seq = int(msg.metadata.sequence.stream)
                    try:
                        event = events_pb2.PredictionRecorded.FromString(msg.data)
                    except DecodeError:
                        continue  # store's tests publish a malformed record on purpose (same session NATS)
                    if event.prediction.job in jobs:
                        assert event.tenant == "acme"
                        found.append((event, dict(msg.headers or {})))
        finally:
            await sub.unsubscribe()
        return found

    async def dead_letter(self, job_id: uuid.UUID, index: int) -> RawStreamMsg:
        """The dead letter of an item, read back the way gateway's RetryJob reads it.

        Raises:
            nats.js.errors.NotFoundError: the item has none.
        """
        subject = messaging.dead_letter_subject(str(job_id), index)
        return await self.js.get_last_msg(messaging.DEAD_STREAM, subject)

    async def wait_until(self, condition: Callable[[], Awaitable[bool]], what: str) -> None:
        """Waits (up to WAIT_S) until ``condition`` holds."""
        deadline = time.monotonic() + WAIT_S
        while not await condition():
            assert time.monotonic() < deadline, f"not {what} within {WAIT_S}s"
            await asyncio.sleep(0.05)

    async def delete_consumer(self) -> None:
        """Deletes the test's consumers (one per priority lane when its filter was split)."""
        for consumer in [c for _, c, _ in self.settings.lanes()] + [self.settings.notebook_consumer]:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(messaging.WORK_STREAM, consumer)


@pytest.fixture
async def inference() -> AsyncIterator[FailureInjectingInference]:
    """The failure-injection inference double, serving on a free port."""
    double = FailureInjectingInference()
    await double.start()
    yield double
    if double.hold is not None:
        double.hold.set()
    await double.stop()


@pytest.fixture
async def harness(nats_url: str, inference: FailureInjectingInference) -> AsyncIterator[Harness]:
    """A runner harness on the session's nats-server; runners stop and the consumer goes at the end."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await messaging.ensure_streams(js)
    h = Harness(js, nats_url, inference.target)
    try:
        yield h
    finally:
        await h.stop_runners()
        await h.delete_consumer()
        await nc.close()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on the session's nats-server."""
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 API server on a free port, with fake credentials (moto accepts any)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["nats", "s3"])
async def result_files(request: pytest.FixtureRequest, js: JetStreamContext) -> ResultStore:
    """Each store a gateway can be configured with, by the URL a user would give."""
    if request.param == "nats":
        return result_store("", js)
    request.getfixturevalue("s3_endpoint")
    boto3.client("s3").create_bucket(Bucket="ferry-results")
    return result_store("s3://ferry-results/jobs", js)
