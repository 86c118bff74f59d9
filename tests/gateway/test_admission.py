"""The gateway's admission interceptor on a real grpc.aio server: keys, scopes, limits, deadlines.

The handlers behind it are small stand-ins that report what the interceptor gave them; store is
a real gRPC server speaking store's LookupApiKey contract.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ferry.models.v1 import model_pb2, model_service_pb2, model_service_pb2_grpc
from ferry.predictions.v1 import prediction_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common.errors import FerryError, NotFound, ResourceExhausted
from services.gateway import identity
from services.gateway.admission import MIN_AHEAD, AdaptiveLimit, Drain, RateLimits, inference_seconds
from services.gateway.identity import RouteClass, route
from services.gateway.service import SERVICE_NAMES
from tests.gateway.servers import admitting

KEYS = {
    "key-all": store_service_pb2.LookupApiKeyResponse(
        tenant="acme", scopes=["predict", "jobs", "read"], key_id="k-all"
    ),
    "key-read": store_service_pb2.LookupApiKeyResponse(tenant="acme", scopes=["read"], key_id="k-read"),
    "key-slow": store_service_pb2.LookupApiKeyResponse(
        tenant="beta", scopes=["read"], key_id="k-slow", rate_per_s=0.01, burst=2
    ),
}
Running = tuple[model_service_pb2_grpc.ModelServiceStub, "Models", "KeyStore", grpc.aio.Channel]
DIGESTS = {hashlib.sha256(k.encode()).hexdigest(): v for k, v in KEYS.items()}


class KeyStore(store_service_pb2_grpc.StoreServiceServicer):
    """LookupApiKey over ``KEYS``; counts lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    async def LookupApiKey(
        self, request: store_service_pb2.LookupApiKeyRequest, context: Any
    ) -> store_service_pb2.LookupApiKeyResponse:
        self.lookups += 1
        if request.key_sha256 in DIGESTS:
            return DIGESTS[request.key_sha256]
        raise NotFound("no such key", "API_KEY_NOT_FOUND")


class Models(model_service_pb2_grpc.ModelServiceServicer):
    """ListModels names the caller's tenant; Predict waits until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered: asyncio.Queue[None] = asyncio.Queue()

    async def ListModels(
        self, request: model_service_pb2.ListModelsRequest, context: Any
    ) -> model_service_pb2.ListModelsResponse:
        return model_service_pb2.ListModelsResponse(models=[model_pb2.Model(name=identity.tenant())])

    async def Predict(
        self, request: model_service_pb2.PredictRequest, context: Any
    ) -> model_service_pb2.PredictResponse:
        self.entered.put_nowait(None)
        await self.release.wait()
        return model_service_pb2.PredictResponse()


@asynccontextmanager
async def gateway(**settings: Any) -> AsyncIterator[Running]:
    """A server with the common and the admission interceptor in front of ``Models``."""
    keys, models = KeyStore(), Models()

    def register(server: grpc.aio.Server) -> None:
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)

    async with admitting(keys, register, **settings) as (channel, _):
        try:
            yield model_service_pb2_grpc.ModelServiceStub(channel), models, keys, channel
        finally:
            models.release.set()


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def refused(call: Callable[[], Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call()
    return caught.value


def details(err: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """The ErrorInfo reason and the RetryInfo delay (seconds) of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    reason, delay = "", None
    for detail in status.details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


async def test_handlers_get_the_tenant_and_bad_keys_are_unauthenticated() -> None:
    async with gateway() as (stub, _, _, _):
        answer = await stub.ListModels(model_service_pb2.ListModelsRequest(), metadata=bearer("key-all"))
        assert [m.name for m in answer.models] == ["acme"]
        for metadata in ((), bearer("made-up")):
            err = await refused(
                lambda metadata=metadata: stub.ListModels(
                    model_service_pb2.ListModelsRequest(), metadata=metadata
                )
            )
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_needs_no_key() -> None:
    async with gateway() as (_, _, _, channel):
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_key_without_the_scope_is_denied_with_what_it_needs() -> None:
    async with gateway() as (stub, models, _, _):
        err = await refused(
            lambda: stub.Predict(model_service_pb2.PredictRequest(), metadata=bearer("key-read"))
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'predict' scope" in (err.details() or "")
        assert details(err)[0] == "MISSING_SCOPE"
        assert models.entered.empty()  # the handler never ran


async def test_a_burst_over_the_keys_rate_gets_resource_exhausted_with_retry_advice() -> None:
    async with gateway() as (stub, _, _, _):
        outcomes = []
        for _ in range(4):  # rate 0.01/s, burst 2: the third and fourth are over
            try:
                await stub.ListModels(model_service_pb2.ListModelsRequest(), metadata=bearer("key-slow"))
                outcomes.append("ok")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                reason, delay = details(err)
                assert reason == "RATE_LIMITED"
                assert delay is not None and 0 < delay <= 100.0
                trailers = dict(err.trailing_metadata() or ())
                assert int(trailers["retry-after"]) >= 1
                outcomes.append("limited")
        assert outcomes == ["ok", "ok", "limited", "limited"]
        # Another key has its own bucket.
        await stub.ListModels(model_service_pb2.ListModelsRequest(), metadata=bearer("key-all"))


async def test_made_up_keys_are_throttled_before_reaching_store() -> None:
    # 0.01 failed lookups a second (a burst of one): no refill during the test, however slow.
    async with gateway(auth_failure_rate_per_s=0.01) as (stub, _, keys, _):
        await stub.ListModels(model_service_pb2.ListModelsRequest(), metadata=bearer("key-all"))
        codes = []
        for n in range(6):
            err = await refused(
                lambda n=n: stub.ListModels(
                    model_service_pb2.ListModelsRequest(), metadata=bearer(f"made-up-{n}")
                )
            )
            codes.append(err.code())
        # One lookup answered UNAUTHENTICATED, then 429 without asking store.
        assert codes[0] == grpc.StatusCode.UNAUTHENTICATED
        assert set(codes[1:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert keys.lookups == 1 + 1
        # A key that worked lately is not held up by the failures.
        await stub.ListModels(model_service_pb2.ListModelsRequest(), metadata=bearer("key-all"))
        # A call with no key costs no lookup: it is told what to send, not throttled.
        err = await refused(lambda: stub.ListModels(model_service_pb2.ListModelsRequest()))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_calls_beyond_the_in_flight_bound_are_refused_at_once() -> None:
    async with gateway(max_inflight=2) as (stub, models, keys, channel):
        held = [
            asyncio.ensure_future(
                stub.Predict(model_service_pb2.PredictRequest(), metadata=bearer("key-all"))
            )
            for _ in range(2)
        ]
        for _ in held:
            await models.entered.get()
        lookups = keys.lookups
        err = await refused(
            lambda: stub.ListModels(model_service_pb2.ListModelsRequest(), metadata=bearer("key-all"))
        )
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details(err)[0] == "OVERLOADED"
        # Refused before its request is read: bytes no protobuf parses still get OVERLOADED, and
        # no key is looked up (the shed path runs before authentication).
        raw = channel.unary_unary("/ferry.models.v1.ModelService/Predict")
        err = await refused(lambda: raw(b"\xff\xff", metadata=bearer("made-up")))
        assert details(err)[0] == "OVERLOADED"
        assert keys.lookups == lookups
        models.release.set()
        await asyncio.gather(*held)
        # Once they finished, calls are admitted again.
        await stub.ListModels(model_service_pb2.ListModelsRequest(), metadata=bearer("key-all"))


async def test_a_prediction_whose_deadline_the_queue_ahead_outlasts_is_refused_at_once() -> None:
    async with gateway() as (stub, models, _, _):
        predict = model_service_pb2.PredictRequest()
        models.release.set()
        for _ in range(MIN_AHEAD):  # finished: how fast predictions drain (at most MIN_AHEAD a second)
            await stub.Predict(predict, metadata=bearer("key-all"))
            models.entered.get_nowait()
        models.release.clear()
        held = [
            asyncio.ensure_future(stub.Predict(predict, metadata=bearer("key-all"), timeout=60))
            for _ in range(MIN_AHEAD)
        ]
        for _ in held:
            await models.entered.get()
        # MIN_AHEAD in flight at no more than MIN_AHEAD a second: a second of work or more ahead.
        err = await refused(lambda: stub.Predict(predict, metadata=bearer("key-all"), timeout=0.5))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert details(err) == ("OVERLOADED", 1.0)
        assert f"{MIN_AHEAD} predictions are in flight ahead of this one" in (err.details() or "")
        assert models.entered.empty()  # never reached the handler
        # A deadline the queue fits in is admitted, as is everything once the queue is gone.
        late = asyncio.ensure_future(stub.Predict(predict, metadata=bearer("key-all"), timeout=60))
        await models.entered.get()
        models.release.set()
        await asyncio.gather(late, *held)


def test_the_drain_refuses_only_past_min_ahead_and_past_the_deadline() -> None:
    clock = _Clock()
    drain = Drain(window_s=2.0, clock=clock)
    assert drain.refusal(1000, 0.1) is None  # nothing finished yet: no rate to judge by
    for _ in range(40):
        clock.now += 0.05
        drain.finished()  # 20 a second over the last 2 s
    assert drain.per_s() == pytest.approx(20.0)
    assert drain.refusal(MIN_AHEAD - 1, 0.01) is None  # too few ahead to judge
    assert drain.refusal(40, None) is None  # no deadline
    assert drain.refusal(40, 2.5) is None  # 2 s of work fits in 2.5 s
    refusal = drain.refusal(40, 1.5)
    assert refusal is not None and refusal.reason == "OVERLOADED"
    assert refusal.metadata == {"in_flight": "40", "queue_ms": "2000"}
    clock.now += 10  # nothing finished lately: no rate, no refusal
    assert drain.refusal(40, 0.1) is None


async def test_a_call_without_a_deadline_gets_the_routes_default() -> None:
    async with gateway(default_predict_deadline_s=0.2) as (stub, _, _, _):
        err = await refused(
            lambda: stub.Predict(model_service_pb2.PredictRequest(), metadata=bearer("key-all"))
        )
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert details(err)[0] == "DEFAULT_DEADLINE_EXCEEDED"


def test_the_prediction_bound_shrinks_when_latency_grows_and_grows_back_when_it_is_low() -> None:
    now = [0.0]
    limit = AdaptiveLimit(initial=4, minimum=1, maximum=16, tolerance=2.0, clock=lambda: now[0])
    for _ in range(4):
        limit.enter()
    with pytest.raises(FerryError) as caught:
        limit.enter()  # the fifth: refused at once
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and caught.value.reason == "OVERLOADED"
    for _ in range(4):
        limit.leave(0.1)  # fast, while saturated: the limit grows
    grown = limit.limit
    assert grown > 4

    limit.enter()
    limit.leave(0.5)  # five times the best latency: work queues, the limit shrinks
    assert limit.limit < grown
    shrunk = limit.limit
    limit.enter()
    limit.leave(0.5)  # the same round: not cut twice
    assert limit.limit == shrunk
    limit.enter()
    limit.leave(None)  # failures say nothing about latency
    assert limit.limit == shrunk and limit.count == 0


#: Besides key management, what needs admin: loading and unloading models and moving a default
#: version (Ferry's API and the OIP repository extension over REST).
_MODEL_ADMIN = {
    "LoadModel",
    "UnloadModel",
    "SetDefaultVersion",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
}


def test_every_public_method_has_a_scope_and_only_key_and_model_management_need_admin() -> None:
    for service_name in SERVICE_NAMES:
        service = descriptor_pool.Default().FindServiceByName(service_name)
        for method in service.methods:
            found = route(f"/{service_name}/{method.name}")
            assert found.scopes, method.full_name
            admin = service_name == "ferry.admin.v1.KeyService" or method.name in _MODEL_ADMIN
            assert ("admin" in found.scopes) == admin, method.full_name
            assert (found.kind is RouteClass.STREAM) == method.server_streaming, method.full_name
            # Every stream counts among its tenant's (admission.TenantStreams), uploads included.
            assert found.held == (method.server_streaming or method.client_streaming), method.full_name


def test_the_prediction_bound_keeps_its_floor_and_learns_from_inferences_own_time() -> None:
    now = [0.0]
    limit = AdaptiveLimit(initial=8, minimum=4, maximum=16, tolerance=2.0, clock=lambda: now[0])
    limit.enter()
    limit.leave(0.05)
    for step in range(1, 20):  # ever slower: the limit falls to its floor, not below
        now[0] = float(step)
        limit.enter()
        limit.leave(0.05 * 3 * step)
    assert limit.limit == 4

    timed = model_service_pb2.PredictResponse()
    timed.prediction.timing.CopyFrom(
        types_pb2.Timing(queue_ms=30, decode_ms=5, inference_ms=15, total_ms=900)
    )
    assert inference_seconds(timed) == pytest.approx(0.05)  # a slow publish (total_ms) is not the model's
    batch = model_service_pb2.BatchPredictResponse(
        predictions=[prediction_pb2.Prediction(timing=types_pb2.Timing(queue_ms=ms)) for ms in (10, 70)]
    )
    assert inference_seconds(batch) == pytest.approx(0.07)
    assert inference_seconds(model_service_pb2.PredictResponse()) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_lookups_of_unknown_keys_stay_within_the_global_cap() -> None:
    # 5 a second per source, 50 from all: 1,000 lookups at once from 100 addresses, none answered yet.
    clock = _Clock()
    limits = RateLimits(100, 0, 5.0, clock=clock)
    reserved = 0
    for second in range(10):
        clock.now = float(second)
        for n in range(1000):
            try:
                limits.reserve_lookup(f"10.0.{n % 100}.1")
                reserved += 1
            except ResourceExhausted:
                pass
    # Ten seconds at 50/s, plus the initial burst (twice the rate): never 1,000 a second.
    assert reserved <= 10 * 50 + 2 * 50


def test_a_wrong_key_flood_from_many_addresses_never_throttles_a_valid_key_from_elsewhere() -> None:
    clock = _Clock()
    limits = RateLimits(100, 0, 5.0, clock=clock)
    flood = [f"10.1.0.{n}" for n in range(15)]
    valid_refused = 0
    for tick in range(600):  # a minute in steps of 0.1 s
        clock.now = tick / 10
        for source in flood * 4:  # 600 made-up keys a second, from 15 addresses
            try:
                limits.failed(limits.reserve_lookup(source))
            except ResourceExhausted:
                pass
        if tick % 10 == 0:  # one never-used valid key a second, from an address of its own
            try:
                limits.found(limits.reserve_lookup(f"192.0.2.{tick // 10}"))
            except ResourceExhausted:
                valid_refused += 1
    assert valid_refused == 0


def test_a_valid_key_gives_its_lookup_back() -> None:
    clock = _Clock()
    limits = RateLimits(100, 0, 0.5, clock=clock)  # a burst of one lookup per source
    for _ in range(5):
        limits.found(limits.reserve_lookup("10.2.0.1"))
    limits.failed(limits.reserve_lookup("10.2.0.1"))
    with pytest.raises(ResourceExhausted):
        limits.reserve_lookup("10.2.0.1")
