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
"""

from __future__ import annotations

import asyncio
import time

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common.downstream import Backend
from services.common.errors import NotFound, Unavailable
from services.common.validation import model_name

MIN_REFRESH_S = 0.5
"""Least time between two refreshes caused by an unknown model name."""
STALE_S = 30.0
"""How long past ``ttl_s`` the list is still answered while a refresh is under way (an inference
that does not answer for longer makes callers wait for it, and see its error)."""


class ModelCatalog:
    """Lists and finds models; a copy of inference's list at most ``ttl_s`` old (0: no cache)."""

    def __init__(
        self, inference: inference_service_pb2_grpc.InferenceServiceStub, backend: Backend, ttl_s: float = 2.0
    ) -> None:
        self._inference = inference
        self._backend = backend
        self._ttl_s = ttl_s
        self._models: list[model_pb2.Model] = []
        self._fetched = -float("inf")  # monotonic time of the last answer
        self._refresh: asyncio.Future[list[model_pb2.Model]] | None = None

    async def served(self) -> list[model_pb2.Model]:
        """Returns the served models, sorted by name."""
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
            self._refresh = asyncio.ensure_future(self._ask())
            self._refresh.add_done_callback(self._refreshed)
        return self._refresh

    def _refreshed(self, done: asyncio.Future[list[model_pb2.Model]]) -> None:
        self._refresh = None
        if not done.cancelled() and done.exception() is None:
            self._models = done.result()
            self._fetched = time.monotonic()

    async def _ask(self) -> list[model_pb2.Model]:
        answer: inference_service_pb2.ListModelsResponse = await self._backend.call(
            self._inference.ListModels, inference_service_pb2.ListModelsRequest()
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


def _find(models: list[model_pb2.Model], model: str) -> model_pb2.Model | None:
    name = model_name(model)
    return next((m for m in models if m.name == name), None)
