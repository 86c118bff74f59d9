"""The model catalog's cache: one call to inference serves many, and a miss refreshes it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from services.common.channels import open_channel
from services.common.downstream import Backend
from services.common.errors import FerryError
from services.gateway import catalog
from services.gateway.catalog import ModelCatalog
from tests.gateway.servers import serving


class Inference(inference_service_pb2_grpc.InferenceServiceServicer):
    """ListModels over ``names``; counts calls; answers only once ``busy`` (when set) is set."""

    def __init__(self) -> None:
        self.names = ["models/a"]
        self.calls = 0
        self.busy: asyncio.Event | None = None

    async def ListModels(
        self, request: inference_service_pb2.ListModelsRequest, context: Any
    ) -> inference_service_pb2.ListModelsResponse:
        self.calls += 1
        if self.busy is not None:
            await self.busy.wait()
        return inference_service_pb2.ListModelsResponse(models=[model_pb2.Model(name=n) for n in self.names])


@contextlib.asynccontextmanager
async def catalog_of(inference: Inference, ttl_s: float) -> AsyncIterator[ModelCatalog]:
    """A catalog of ``inference`` served on a free port."""
    async with serving(
        lambda s: inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(inference, s)
    ) as target:
        channel = open_channel(target, 1024 * 1024)
        yield ModelCatalog(
            inference_service_pb2_grpc.InferenceServiceStub(channel),
            Backend("inference", channel, 5.0),
            ttl_s,
        )


async def test_the_list_is_reused_and_refreshed_when_a_model_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inference = Inference()
    async with catalog_of(inference, ttl_s=3600) as models:
        answers = await asyncio.gather(*(models.served() for _ in range(20)))
        assert {tuple(m.name for m in a) for a in answers} == {("models/a",)}
        assert (await models.get("a")).name == "models/a"
        assert inference.calls == 1  # concurrent callers shared one call; later ones used the copy

        inference.names = ["models/a", "models/b"]  # a model loaded since
        monkeypatch.setattr(catalog, "MIN_REFRESH_S", 0.0)
        assert (await models.get("b")).name == "models/b"
        assert inference.calls == 2
        with pytest.raises(FerryError) as caught:
            await models.get("c")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert "'models/a', 'models/b'" in caught.value.message

        inference.names = ["models/b"]  # inference says a is gone: the list is refreshed
        error = await models.not_found("a")
        assert "'models/a'" not in error.message.split("available models:")[1]


async def test_a_list_past_its_ttl_is_answered_while_refreshed_behind_the_call() -> None:
    inference = Inference()
    async with catalog_of(inference, ttl_s=0.05) as models:
        assert [m.name for m in await models.served()] == ["models/a"]
        inference.names = ["models/a", "models/b"]
        inference.busy = asyncio.Event()
        await asyncio.sleep(0.1)
        # Past its ttl: answered at once from the list on hand, inference asked once behind it.
        answers = await asyncio.wait_for(asyncio.gather(*(models.served() for _ in range(5))), 1)
        assert {tuple(m.name for m in a) for a in answers} == {("models/a",)}
        inference.busy.set()
        for _ in range(100):
            if len(await models.served()) == 2:
                break
            await asyncio.sleep(0.02)
        assert [m.name for m in await models.served()] == ["models/a", "models/b"]
        assert inference.calls == 2


def test_work_for_a_model_that_failed_to_load_is_refused_with_its_reason() -> None:
    # CreateJob on a model whose notebook does not exist used to queue the job, retry its items
    # for 5 minutes, then fail them: it is refused at once, as Predict is (503 MODEL_FAILED).
    failed = model_pb2.Model(
        name="models/broken",
        state=model_pb2.MODEL_STATE_FAILED,
        state_message="notebook /x.ipynb cannot be read: [Errno 2] No such file or directory",
    )
    with pytest.raises(FerryError) as refused:
        catalog.refuse_failed(failed)
    assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_FAILED")
    assert "model 'broken' failed to load: notebook /x.ipynb cannot be read" in str(refused.value)
    for state in (model_pb2.MODEL_STATE_READY, model_pb2.MODEL_STATE_LOADING):
        catalog.refuse_failed(model_pb2.Model(name="models/a", state=state))  # not refused
