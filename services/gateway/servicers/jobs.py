"""``ferry.jobs.v1.JobService`` handlers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from ferry.jobs.v1 import job_service_pb2, job_service_pb2_grpc
from services.common.job_states import FINISHED
from services.gateway import identity
from services.gateway.components import ComponentsSlot
from services.gateway.idempotency import Edge
from services.gateway.watch import watch_job

Context = grpc.aio.ServicerContext[object, object]


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Creates, reads, cancels and retries the caller's batch jobs."""

    def __init__(self, slot: ComponentsSlot) -> None:
        self._slot = slot

    async def CreateJob(
        self, request: job_service_pb2.CreateJobRequest, context: Context
    ) -> job_service_pb2.CreateJobResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        job = await c.jobs.create(tenant, request, Edge.of(context.invocation_metadata()))
        return job_service_pb2.CreateJobResponse(job=job)

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Context
    ) -> job_service_pb2.GetJobResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return job_service_pb2.GetJobResponse(job=await c.records.get_job(tenant, request.name))

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Context
    ) -> job_service_pb2.ListJobsResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return await c.records.list_jobs(tenant, request)

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Context
    ) -> job_service_pb2.CancelJobResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return job_service_pb2.CancelJobResponse(job=await c.jobs.cancel(tenant, request.name))

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        c = self._slot.get()
        tenant = identity.tenant()
        s = c.settings
        async for update in watch_job(
            c.records, tenant, request.name, s.watch_poll_s, s.watch_max_s, s.watch_keepalive_s
        ):
            if update.job.state in FINISHED:  # the file is made before the watcher hears of the end
                await c.jobs.results.write_quietly(tenant, update.job)
            yield update

    async def GetJobResults(
        self, request: job_service_pb2.GetJobResultsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Yields each GetJobResultsResponse already serialized, as the result file holds it: the
        method's serializer passes bytes through (``GatewayService.serialized_responses``)."""
        c = self._slot.get()
        tenant = await c.auth.tenant(context)
        # Closed at once when the caller goes away mid-download: that deletes its NATS consumer.
        async with contextlib.aclosing(c.jobs.results.read(tenant, request.name)) as results:
            async for result in results:
                yield result

    async def GetJobNotebook(
        self, request: job_service_pb2.GetJobNotebookRequest, context: Context
    ) -> job_service_pb2.GetJobNotebookResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return await c.jobs.notebook(tenant, request.name)

    async def ListJobItems(
        self, request: job_service_pb2.ListJobItemsRequest, context: Context
    ) -> job_service_pb2.ListJobItemsResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return await c.jobs.list_items(tenant, request)

    async def CreateUpload(
        self, request_iterator: AsyncIterator[job_service_pb2.CreateUploadRequest], context: Context
    ) -> job_service_pb2.CreateUploadResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return job_service_pb2.CreateUploadResponse(
            upload=await c.jobs.uploads.create(tenant, request_iterator)
        )

    async def RetryJob(
        self, request: job_service_pb2.RetryJobRequest, context: Context
    ) -> job_service_pb2.RetryJobResponse:
        c = self._slot.get()
        tenant = identity.tenant()
        return await c.jobs.retry(tenant, request.name)
