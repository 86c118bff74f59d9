"""The gateway's admission interceptor: one place that authenticates, authorizes and admits calls.

It runs inside the common ``ServerInterceptor`` (which maps the FerryErrors raised here to
statuses, counts and logs them), so every public method gets, before its handler runs:

1. the in-flight bounds (``admission.InFlight``, and for predictions the learnt
   ``admission.AdaptiveLimit``): refused at once when full;
2. the API key resolved to a ``Caller`` (``auth.Authenticator``), lookups of keys the gateway
   does not know throttled per source address;
3. the method's scope checked (``identity.route``): PERMISSION_DENIED otherwise;
4. the key's rate limit (``admission.RateLimits``), and for streams the tenant's bound on those
   it holds open (``admission.TenantStreams``), its key checked again before each answer;
5. a default deadline when the client sent none.

Health and reflection stay open: probes and tooling carry no key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc

from services.common.errors import DeadlineExceeded, FerryError, Unauthenticated
from services.common.interceptors import Handler, StreamHandler, WrappingInterceptor
from services.gateway.admission import (
    AdaptiveLimit,
    Drain,
    InFlight,
    RateLimits,
    TenantStreams,
    inference_seconds,
)
from services.gateway.auth import api_key_from_metadata, key_digest
from services.gateway.components import ComponentsSlot
from services.gateway.identity import Caller, Route, RouteClass, check_scope, reset_caller, route, set_caller
from services.gateway.settings import GatewaySettings

Context = grpc.aio.ServicerContext[Any, Any]
Metadata = Iterable[tuple[str, str | bytes]]

#: Open to anyone: load balancers' probes and grpcurl's listing carry no key. The Open Inference
#: Protocol's server health (gRPC ServerLive/ServerReady, REST /v2/health/live|ready) is such a
#: probe too, and Triton and KServe answer it without credentials; it says nothing about models.
_OPEN_PREFIXES = (
    "/grpc.health.",
    "/grpc.reflection.",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/ferry.openinference.v1.OpenInferenceRestService/GetServerHealth",
)


def source_address(metadata: Metadata | None, context: Context) -> str:
    """The caller's address: the last ``x-forwarded-for`` hop (Envoy appends the peer), else the peer."""
    for name, value in metadata or ():
        if name == "x-forwarded-for" and isinstance(value, str):
            return value.rsplit(",", 1)[-1].strip()
    peer = context.peer() or ""
    return peer.rpartition(":")[0] or peer


class AdmissionInterceptor(WrappingInterceptor):
    """Authenticates, authorizes and admits every public call (see the module docstring)."""

    open_prefixes = _OPEN_PREFIXES

    def __init__(self, slot: ComponentsSlot, settings: GatewaySettings) -> None:
        super().__init__()
        self._slot = slot
        self.inflight = InFlight(settings.max_inflight)
        self.predictions = AdaptiveLimit(
            max(8, settings.min_inflight_predict),
            settings.min_inflight_predict,
            settings.max_inflight_predict,
            settings.predict_latency_tolerance,
        )
        self.drain = Drain()
        """How fast predictions finish: a call whose deadline the queue ahead would outlast is refused."""
        self.limits = RateLimits(
            settings.rate_limit_per_s, settings.rate_limit_burst, settings.auth_failure_rate_per_s
        )
        self.streams = TenantStreams(settings.max_streams_per_tenant)
        self.tell_suspect: Callable[[str], Awaitable[None]] = _alone
        """Names a source whose key was wrong to the other gateways (services/gateway/peers.py)."""
        self._deadlines = {
            RouteClass.PREDICT: settings.default_predict_deadline_s,
            RouteClass.JOBS: settings.default_jobs_deadline_s,
            RouteClass.READ: settings.default_read_deadline_s,
        }

    def shed(self, method: str) -> FerryError | None:
        """Run by the common interceptor before a call is read: OVERLOADED while the bound is full.

        Refusing there, before the request is parsed, traced or authenticated, keeps a refusal
        cheap; at 400 clients against a bound of 256 most calls are refusals.
        """
        return None if method.startswith(_OPEN_PREFIXES) else self.inflight.refusal()

    def wrap_unary(self, method: str, inner: Handler) -> Handler:
        needed = route(method)
        budget = self._deadlines.get(needed.kind)
        if needed.kind is RouteClass.PREDICT:
            return self._wrap_predict(method, needed, inner, budget)

        async def admitted(request: Any, context: Context) -> Any:
            self.inflight.enter()
            try:
                return await self._call(method, needed, inner, budget, request, context)
            finally:
                self.inflight.leave()

        return admitted

    def _wrap_predict(self, method: str, needed: Route, inner: Handler, budget: float | None) -> Handler:
        """As ``wrap_unary``, and within the learnt bound of predictions in flight (``AdaptiveLimit``)."""

        async def admitted(request: Any, context: Context) -> Any:
            remaining = context.time_remaining()
            too_late = self.drain.refusal(self.predictions.count, budget if remaining is None else remaining)
            if too_late is not None:
                raise too_late
            self.inflight.enter()
            try:
                self.predictions.enter()
            except BaseException:
                self.inflight.leave()
                raise
            started, latency = time.perf_counter(), None
            try:
                answer = await self._call(method, needed, inner, budget, request, context)
                latency = inference_seconds(answer) or time.perf_counter() - started
                return answer
            finally:
                self.predictions.leave(latency)
                self.drain.finished()
                self.inflight.leave()

        return admitted

    async def _call(
        self, method: str, needed: Route, inner: Handler, budget: float | None, request: Any, context: Context
    ) -> Any:
        """Admits the caller, then runs the handler as them, within the default deadline if needed."""
        caller = await self.admit(method, needed, context)
        if needed.held:
            self.streams.enter(caller.tenant)
        token = set_caller(caller)
        try:
            if budget is None or context.time_remaining() is not None:
                return await inner(request, context)
            return await _within(budget, needed.kind, inner(request, context))
        finally:
            reset_caller(token)
            if needed.held:
                self.streams.leave(caller.tenant)

    def wrap_stream(self, method: str, inner: StreamHandler) -> StreamHandler:
        needed = route(method)

        async def admitted(request: Any, context: Context) -> AsyncIterator[Any]:
            caller = await self.admit(method, needed, context)
            digest = key_digest(api_key_from_metadata(context.invocation_metadata()))
            if needed.held:
                self.streams.enter(caller.tenant)
            token = set_caller(caller)
            try:
                async for response in inner(request, context):
                    if needed.held:
                        await self._still_valid(digest)
                    yield response
            finally:
                reset_caller(token)
                if needed.held:
                    self.streams.leave(caller.tenant)

        return admitted

    async def _still_valid(self, digest: str) -> None:
        """Checks a stream's key again before each answer: a watch lasts up to an hour, and one
        opened with a key revoked since kept answering until it ended. The key's cache entry
        makes this a lookup in memory; a key revoked at this gateway is refused at its next
        answer, at another within the cache's TTL.

        Raises:
            Unauthenticated: the key no longer works (INVALID_API_KEY).
        """
        await self._slot.get().auth.resolve(digest)

    async def admit(self, method: str, needed: Route, context: Context) -> Caller:
        """The call's caller, once its key, scope and rate allow the call.

        Raises:
            FerryError: UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED (see the module).
        """
        auth = self._slot.get().auth
        metadata = context.invocation_metadata()
        digest = key_digest(api_key_from_metadata(metadata))  # no key at all: 401, no lookup
        if not auth.must_ask(digest):
            caller = await auth.resolve(digest)
        else:
            # Only a lookup in store costs: it is what made-up keys are throttled on. A key that
            # worked lately is spared, so a flood of made-up ones does not lock out known callers.
            ticket = self.limits.reserve_lookup(source_address(metadata, context))
            try:
                caller = await auth.resolve(digest)
            except Unauthenticated:
                if self.limits.failed(ticket) and ticket:
                    await self.tell_suspect(ticket.source)
                raise
            self.limits.found(ticket)
        check_scope(caller, method, needed)
        self.limits.admit(caller)
        return caller


async def _alone(source: str) -> None:
    """No other gateway to tell (until the service wires NATS in)."""


async def _within(budget_s: float, kind: RouteClass, call: Awaitable[Any]) -> Any:
    """Awaits ``call`` for at most ``budget_s``: the default deadline of a call that set none."""
    try:
        async with asyncio.timeout(budget_s) as scope:
            return await call
    except TimeoutError:
        if not scope.expired():
            raise
        raise DeadlineExceeded(
            f"the call took longer than {budget_s:g}s, the default deadline of {kind.value} calls that "
            "set none; set a longer deadline (grpc-timeout) or retry",
            reason="DEFAULT_DEADLINE_EXCEEDED",
            metadata={"deadline_s": f"{budget_s:g}"},
        ) from None
