"""The served models, as inference reports them, cached briefly.

The list changes only when inference restarts or loads a model, yet every ListModels, GetModel,
job and not-found answer needs it: asking inference each time cost a network hop per call. So the
list is kept for ``ttl_s`` and refreshed early when it may be wrong: a model not in it (asked
again, at most every ``MIN_REFRESH_S``, so made-up names cannot flood inference) or inference
saying NOT_FOUND for a model the list had. Concurrent refreshes share one call.

A list past ``ttl_s`` is refreshed behind the call that notices, which answers from the list on
hand (for up to ``STALE_S`` more): a call waiting on that refresh waited on inference, and a busy
inference (a bulk job decoding camera photos) then made one cheap call in every ``ttl_s`` slow:
the other tenants' p99.

While inference cannot be reached (a crash: its process is gone until the supervisor or Kubernetes
restarts it), the list on hand would say READY for models that cannot answer. So the catalog follows
inference's gRPC health stream (``follow``): the moment the stream breaks, every model the list holds
is answered as UNAVAILABLE (not ready, the state message saying why), at once and without waiting on
inference; once inference answers again the list is fetched afresh (LOADING, then READY).

With several inference replicas, the gateway's channel sends calls only to replicas that serve
(client-side health checking). While none does (every replica loading, after a restart of them
all), that channel reaches none: its health check failed at once, so loading replicas were listed
UNAVAILABLE as if crashed, and a list fetched over it waited for its whole deadline. So the catalog
has a second channel to the same replicas without health checking (``reach``): health checks go
over it (a replica answering NOT_SERVING is reachable), and so does the list while the balanced
channel has no serving replica (LOADING, as one replica shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common import limits
from services.common.channels import grpc_target, is_balanced, open_channel
from services.common.downstream import Backend
from services.common.errors import NotFound, Unavailable
from services.common.tasks import spawn
from services.common.validation import model_name

log = logging.getLogger(__name__)

MIN_REFRESH_S = 0.5
"""Least time between two refreshes caused by an unknown model name."""
STALE_S = 30.0
"""How long past ``ttl_s`` the list is still answered while a refresh is under way (an inference
that does not answer for longer makes callers wait for it, and see its error)."""
REWATCH_S = 0.5
"""Wait between two attempts to reopen inference's health stream while it cannot be reached."""
REACH_TIMEOUT_S = 2.0
"""How long a health check may take, after inference's health stream broke, before inference is
listed unreachable (a crash refuses the connection at once; a lost network answers nothing)."""


class ModelCatalog:
    """Lists and finds models; a copy of inference's list at most ``ttl_s`` old (0: no cache)."""

    def __init__(
        self,
        inference: inference_service_pb2_grpc.InferenceServiceStub,
        backend: Backend,
        ttl_s: float = 2.0,
        reach: Reach | None = None,
    ) -> None:
        self._inference = inference
        self._backend = backend
        self._reach = reach
        self._ttl_s = ttl_s
        self._models: list[model_pb2.Model] = []
        self._fetched = -float("inf")  # monotonic time of the last answer
        self._refresh: asyncio.Future[list[model_pb2.Model]] | None = None
        self._unreachable = ""
        """Why inference cannot be reached, while its health stream is broken; "" while it can."""
        self._outages = 0
        """Outages seen so far: a refresh asked before the latest one does not end it."""
        self._refresh_outages = 0

    async def served(self) -> list[model_pb2.Model]:
        """Returns the served models, sorted by name (each UNAVAILABLE while inference is unreachable)."""
        if self._unreachable and self._models:
            self._refreshing()  # ends the outage once inference answers it
            return [_unreachable(m, self._unreachable) for m in self._models]
        age = time.monotonic() - self._fetched
        if age < self._ttl_s:
            return self._models
        if self._ttl_s and age < self._ttl_s + STALE_S:
            self._refreshing()
            return self._models
        return await self._fetch()

    async def _fetch(self) -> list[model_pb2.Model]:
        """Asks inference, or joins the request already on its way."""
        return await asyncio.shield(self._refreshing())

    def _refreshing(self) -> asyncio.Future[list[model_pb2.Model]]:
        """The request to inference on its way, started if there is none."""
        if self._refresh is None:
            self._refresh_outages = self._outages
            self._refresh = asyncio.ensure_future(self._ask())
            self._refresh.add_done_callback(self._refreshed)
        return self._refresh

    def _refreshed(self, done: asyncio.Future[list[model_pb2.Model]]) -> None:
        self._refresh = None
        if not done.cancelled() and done.exception() is None:
            self._models = done.result()
            self._fetched = time.monotonic()
            if self._refresh_outages == self._outages:
                self._unreachable = ""  # inference answered after the outage began: the list is true

    async def follow(self, health: health_pb2_grpc.HealthStub) -> None:
        """Follows inference's overall health for the gateway's life (a background task).

        While inference serves, its health stream is kept open and any answer on it refetches the
        list in the background. Once the stream ends (inference stopping or not yet serving, its
        connection aged by ``max_connection_age_s``, a crash), inference is asked with plain checks
        until it serves again: only when a check cannot reach it is it marked unreachable, and an
        answer alone does not end that outage: the list fetched after it does.
        """
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            await self._watch_while_serving(health, request)
            try:
                # Not wait_for_ready: a refused connection (a crash) must fail this now, not later.
                answer = await health.Check(request, timeout=REACH_TIMEOUT_S)  # type: ignore[attr-defined]
            except grpc.aio.AioRpcError as err:
                self.lost(f"{err.code().name}: {err.details()}")
                await asyncio.sleep(REWATCH_S)
                continue
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                self._refreshing()  # starting or stopping: its models' states change meanwhile
                await asyncio.sleep(REWATCH_S)

    async def _watch_while_serving(
        self, health: health_pb2_grpc.HealthStub, request: health_pb2.HealthCheckRequest
    ) -> None:
        """Follows the health stream until it ends or says anything but SERVING.

        It is let go as soon as inference is not serving: a stopping inference drains its open
        calls before it exits (up to its grace, 10 s), so a stream held open here would delay every
        restart by that much.
        """
        call = health.Watch(request)  # type: ignore[attr-defined]  # the stubs omit it
        try:
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for answer in call:
                    self._refreshing()
                    if answer.status != health_pb2.HealthCheckResponse.SERVING:
                        return
        finally:
            call.cancel()  # leaving the loop alone would keep the stream open on the server

    def lost(self, why: str) -> None:
        """Marks inference unreachable: models are listed UNAVAILABLE until a refresh succeeds."""
        if not self._unreachable:
            log.warning("inference is unreachable (%s): models are listed UNAVAILABLE until it answers", why)
            self._outages += 1
        self._unreachable = why

    async def _ask(self) -> list[model_pb2.Model]:
        stub, backend = self._inference, self._backend
        if self._reach is not None and not self._reach.any_serving():
            stub, backend = self._reach.inference, self._reach.backend
        answer: inference_service_pb2.ListModelsResponse = await backend.call(
            stub.ListModels, inference_service_pb2.ListModelsRequest()
        )
        return sorted(answer.models, key=lambda m: m.name)

    async def get(self, model: str) -> model_pb2.Model:
        """Returns the model with id ``model``.

        Raises:
            NotFound: no such model; the message names the served ones.
        """
        models = await self.served()
        found = _find(models, model)
        if found is None and time.monotonic() - self._fetched >= MIN_REFRESH_S:
            models = await self._fetch()  # loaded since the list was fetched?
            found = _find(models, model)
        if found is None:
            raise self._not_found(model, models)
        return found

    def invalidate(self) -> None:
        """Forgets the list: the next call asks inference (a model was loaded or unloaded)."""
        self._fetched = -float("inf")

    async def not_found(self, model: str) -> NotFound:
        """The NOT_FOUND error for ``model`` (inference said so), naming the models now served."""
        self._fetched = -float("inf")  # the list had it, so the list is out of date
        return self._not_found(model, await self.served())

    @staticmethod
    def _not_found(model: str, models: list[model_pb2.Model]) -> NotFound:
        served = ", ".join(repr(m.name) for m in models) or "none (inference has no model loaded)"
        return NotFound(
            f"model {model_name(model)!r} is not served; available models: {served}",
            reason="MODEL_NOT_FOUND",
            metadata={"model": model_name(model)},
        )


@dataclass(frozen=True)
class Reach:
    """Every inference replica, serving or not, beside the balanced channel that reaches only
    serving ones (see the module docstring)."""

    balanced: grpc.aio.Channel
    channel: grpc.aio.Channel
    inference: inference_service_pb2_grpc.InferenceServiceStub
    backend: Backend

    def any_serving(self) -> bool:
        """Whether the balanced channel has a replica that serves (it is READY only then)."""
        return self.balanced.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY


def followed_catalog(
    stack: AsyncExitStack,
    channel: grpc.aio.Channel,
    backend: Backend,
    ttl_s: float,
    target: str = "",
    max_message_bytes: int = limits.MAX_MESSAGE_BYTES,
) -> ModelCatalog:
    """The gateway's catalog of inference's models, following inference's health until ``stack``
    closes, so that a crash of inference shows in the list at once (``ModelCatalog.follow``).

    ``target``: inference's replicas, as ``channel`` was opened to; several get the ``Reach``
    channel the catalog needs while none of them serves."""
    reach = None
    health = health_pb2_grpc.HealthStub(channel)
    if target and is_balanced(grpc_target(target)):
        unchecked = open_channel(target, max_message_bytes, health_checked=False)
        stack.push_async_callback(unchecked.close)
        unchecked_backend = Backend(backend.name, unchecked, backend.timeout_s, own_unavailable=True)
        stub = inference_service_pb2_grpc.InferenceServiceStub(unchecked)
        reach = Reach(channel, unchecked, stub, unchecked_backend)
        health = health_pb2_grpc.HealthStub(unchecked)
    catalog = ModelCatalog(inference_service_pb2_grpc.InferenceServiceStub(channel), backend, ttl_s, reach)
    spawn(stack, catalog.follow(health), "follow-inference")
    return catalog


def refuse_failed(model: model_pb2.Model) -> None:
    """Refuses work for a model that failed to load, with inference's reason, as Predict does.

    A job's items would otherwise be queued and each retried for the jobs' retry budget (5
    minutes) before failing with the same reason.

    Raises:
        Unavailable: MODEL_FAILED (503), the message saying why it failed.
    """
    if model.state == model_pb2.MODEL_STATE_FAILED:
        raise Unavailable(
            f"model {model.name.removeprefix('models/')!r} failed to load: {model.state_message}; "
            "fix it and load it again (`ferry models load NAME`)",
            reason="MODEL_FAILED",
            metadata={"model": model.name.removeprefix("models/")},
        )


def _unreachable(model: model_pb2.Model, why: str) -> model_pb2.Model:
    """``model`` as a caller sees it while inference cannot be reached: not ready, and why."""
    message = (
        f"inference is not answering ({why}); calls wait for it to come back (a restart after a "
        "crash takes seconds)"
    )
    shown = model_pb2.Model()
    shown.CopyFrom(model)
    if model.state in _SERVING_STATES:
        shown.ready = False
        shown.state = model_pb2.MODEL_STATE_UNAVAILABLE
        shown.state_message = message
    for version in shown.versions:
        if version.state in _SERVING_STATES:
            version.state = model_pb2.MODEL_STATE_UNAVAILABLE
            version.state_message = message
    return shown


#: States that say a model serves or soon will: untrue while inference is unreachable. (FAILED and
#: UNLOADED stay as they are: they need an admin whether or not inference runs.)
_SERVING_STATES = frozenset(
    {model_pb2.MODEL_STATE_READY, model_pb2.MODEL_STATE_LOADING, model_pb2.MODEL_STATE_UNAVAILABLE}
)


def _find(models: list[model_pb2.Model], model: str) -> model_pb2.Model | None:
    name = model_name(model)
    return next((m for m in models if m.name == name), None)
