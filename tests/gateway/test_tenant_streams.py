"""Streams one tenant holds open (WatchJob, GetJobResults, CreateUpload), through the gateway's real
interceptors: bounded per tenant, and ended when their key is revoked.

Envoy keeps at most limits.EDGE_STREAMS streams open to the gateways for every tenant together;
a stream is not counted in flight and a watch lasts up to an hour. Before the bound, one key
opened 1,024 watches within seconds of its rate limit, and every other tenant's watch got Envoy's
429 OVERLOADED; a watch opened with a key revoked since kept answering until it ended.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from ferry.jobs.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common.errors import FerryError, NotFound
from services.gateway.admission import TenantStreams
from services.gateway.auth import Authenticator
from tests.gateway.servers import admitting
from tests.gateway.test_admission import bearer, details, refused

#: key -> (tenant, scopes).
KEYS = {"key-a1": ("acme", ["jobs"]), "key-a2": ("acme", ["read"]), "key-b": ("beta", ["jobs"])}


class KeyStore(store_service_pb2_grpc.StoreServiceServicer):
    """LookupApiKey over ``known``; a key removed from it is revoked."""

    def __init__(self) -> None:
        self.known = {hashlib.sha256(k.encode()).hexdigest(): v for k, v in KEYS.items()}

    async def LookupApiKey(
        self, request: store_service_pb2.LookupApiKeyRequest, context: Any
    ) -> store_service_pb2.LookupApiKeyResponse:
        if request.key_sha256 not in self.known:
            raise NotFound("no such key", "API_KEY_NOT_FOUND")
        tenant, scopes = self.known[request.key_sha256]
        return store_service_pb2.LookupApiKeyResponse(tenant=tenant, scopes=scopes, key_id=request.key_sha256)


class Jobs(job_service_pb2_grpc.JobServiceServicer):
    """A watch that answers every ``tick`` and never ends; an upload that reads until its client ends."""

    def __init__(self) -> None:
        self.tick = asyncio.Event()

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        while True:
            yield job_service_pb2.WatchJobResponse(job=job_pb2.Job(name=request.name))
            await self.tick.wait()
            self.tick.clear()

    async def CreateUpload(
        self, request_iterator: AsyncIterator[job_service_pb2.CreateUploadRequest], context: Any
    ) -> job_service_pb2.CreateUploadResponse:
        async for _ in request_iterator:
            pass
        return job_service_pb2.CreateUploadResponse()


Running = tuple[job_service_pb2_grpc.JobServiceStub, Jobs, KeyStore, Authenticator]


@asynccontextmanager
async def gateway(**settings: Any) -> AsyncIterator[Running]:
    """The common and the admission interceptor in front of ``Jobs``, keys from ``KeyStore``."""
    keys, jobs = KeyStore(), Jobs()
    register = lambda s: job_service_pb2_grpc.add_JobServiceServicer_to_server(jobs, s)  # noqa: E731
    async with admitting(keys, register, **settings) as (channel, auth):
        yield job_service_pb2_grpc.JobServiceStub(channel), jobs, keys, auth


async def _watch(stub: job_service_pb2_grpc.JobServiceStub, key: str) -> Any:
    """A watch whose first answer came: it is open."""
    call = stub.WatchJob(job_service_pb2.WatchJobRequest(name="jobs/x"), metadata=bearer(key))
    await call.read()
    return call


async def test_a_tenant_past_its_streams_is_refused_and_other_tenants_are_not() -> None:
    async with gateway(max_streams_per_tenant=3) as (stub, _, _, _):
        # Two keys of one tenant share its bound: a tenant's keys are all its own.
        held = [await _watch(stub, key) for key in ("key-a1", "key-a2", "key-a1")]
        call = stub.WatchJob(job_service_pb2.WatchJobRequest(name="jobs/x"), metadata=bearer("key-a2"))
        err = await refused(call.read)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, delay = details(err)
        assert reason == "TOO_MANY_STREAMS" and delay is not None
        assert "3 streams open" in (err.details() or "")
        # An upload is a stream too.
        upload = stub.CreateUpload(metadata=bearer("key-a1"))
        await upload.done_writing()
        assert details(await refused(lambda: upload))[0] == "TOO_MANY_STREAMS"
        # Another tenant is not held up by it.
        other = await _watch(stub, "key-b")
        other.cancel()
        # A stream that ends gives its place back.
        held.pop().cancel()
        await asyncio.sleep(0.2)  # the server sees the cancellation
        held.append(await _watch(stub, "key-a1"))
        for call in held:
            call.cancel()


async def test_a_watch_ends_when_its_key_is_revoked() -> None:
    async with gateway() as (stub, jobs, keys, auth):
        call = await _watch(stub, "key-b")
        digest = hashlib.sha256(b"key-b").hexdigest()
        del keys.known[digest]  # revoked in store...
        auth.forget(digest)  # ...and at this gateway (KeyAdmin.revoke does both)
        jobs.tick.set()
        err = await refused(call.read)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert details(err)[0] == "INVALID_API_KEY"


def test_the_bound_is_shared_between_gateways_and_zero_turns_it_off() -> None:
    streams = TenantStreams(5)
    streams.gateways = lambda: 2
    for _ in range(3):  # 5 / 2, rounded up
        streams.enter("acme")
    with pytest.raises(FerryError, match="3 streams open"):
        streams.enter("acme")
    streams.leave("acme")
    streams.enter("acme")
    for _ in range(3):
        streams.leave("acme")
    assert streams.held("acme") == 0
    unbounded = TenantStreams(0)
    for _ in range(10_000):
        unbounded.enter("acme")
