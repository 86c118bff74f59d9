"""The jobs service: no API of its own, only a runner in the background (health and reflection)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack

import grpc

from ferry.inference.v1 import inference_service_pb2_grpc
from services.common import messaging
from services.common.channels import open_channel
from services.common.messaging import open_cancelled_bucket
from services.common.readiness import Readiness
from services.common.tasks import spawn
from services.jobs.cancellation import CancelledJobs
from services.jobs.predictor import Predictor
from services.jobs.runner import Runner
from services.jobs.settings import JobsSettings


class JobsService:
    """Runs job items from the work stream; SERVING once NATS is connected and the consumer exists."""

    name = "jobs"

    def __init__(self, settings: JobsSettings) -> None:
        self.settings = settings

    def service_names(self) -> Sequence[str]:
        """None: the runner serves only health ("") and reflection."""
        return ()

    def register(self, server: grpc.aio.Server) -> None:
        """Nothing to register; the runner takes its work from NATS, not from callers."""

    async def start(self, stack: AsyncExitStack, readiness: Readiness) -> None:
        """Connects to NATS and inference, creates the consumer and starts the runner task.

        Cleanups run in reverse: the runner stops first (handing back unfinished items), then
        the inference channel closes, then the NATS connection drains.
        """
        s = self.settings
        _, js = await messaging.connect(s.nats_url, "ferry-jobs", stack)
        await messaging.ensure_streams(js)
        cancelled = CancelledJobs(await open_cancelled_bucket(js), s.cancel_cache_s)
        channel = open_channel(s.inference_target, s.max_message_bytes)
        stack.push_async_callback(channel.close)
        predictor = Predictor(inference_service_pb2_grpc.InferenceServiceStub(channel), s.inference_timeout_s)
        runner = Runner(js, predictor, cancelled, s)
        await runner.subscribe()
        spawn(stack, runner.run(), "jobs-runner")
