"""Loading and unloading models at runtime (services/inference/repository.py), with a stand-in builder.

The builder here returns a minimal served model: what is pinned is the repository's bookkeeping
(states, reasons, who may be unloaded, stacks closed); the e2e suite loads real weights.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from devstack.infra import free_port
from ferry.models.v1 import model_pb2
from services.common.errors import FailedPrecondition, NotFound
from services.inference.calls import Answered, Request
from services.inference.models.config import ModelConfig
from services.inference.repository import ModelRepository
from services.inference.served import FAILED, LOADING, UNLOADED, Place, Served, Unserved
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings


class _Up(Served):
    def describe(self) -> model_pb2.Model:
        return model_pb2.Model(name=f"models/{self.name}", ready=True, state=model_pb2.MODEL_STATE_READY)

    async def answer(self, request: Request, place: Place | None = None) -> Answered:
        raise AssertionError("not called here")


def _repository(broken: set[str], closed: list[str]) -> tuple[ModelRepository, dict[str, Served]]:
    configs = [
        ModelConfig(name="a"),
        ModelConfig(name="b"),
        ModelConfig(name="pair", members=("a", "b")),
    ]
    models: dict[str, Served] = {c.name: Unserved(c, LOADING) for c in configs}
    repository = ModelRepository(configs, models, drain_s=0.1)

    async def build(config: ModelConfig, stack: AsyncExitStack) -> Served:
        stack.callback(closed.append, config.name)
        if config.name in broken:
            raise RuntimeError("weights are broken")
        return _Up(config)

    repository.attach(build)
    return repository, models


async def test_a_failed_load_says_why_and_leaves_the_others_serving() -> None:
    closed: list[str] = []
    repository, models = _repository({"b"}, closed)
    await repository.load("a")
    with pytest.raises(FailedPrecondition) as caught:
        await repository.load("models/b")
    assert caught.value.reason == "MODEL_LOAD_FAILED" and "weights are broken" in caught.value.message
    assert isinstance(models["a"], _Up)
    b = models["b"]
    assert isinstance(b, Unserved) and b.state == FAILED and b.message == "weights are broken"
    assert closed == ["b"]  # what the failed load had started is stopped


async def test_unload_refuses_new_calls_and_closes_the_models_stack_then_load_brings_it_back() -> None:
    closed: list[str] = []
    repository, models = _repository(set(), closed)
    for name in ("a", "b", "pair"):
        await repository.load(name)
    with pytest.raises(FailedPrecondition) as caught:
        await repository.unload("a")
    assert caught.value.reason == "MODEL_IN_USE" and "pair" in caught.value.message
    await repository.unload("pair")
    unloaded = await repository.unload("a")
    assert isinstance(unloaded, Unserved) and unloaded.state == UNLOADED and models["a"] is unloaded
    error = unloaded.unavailable()
    assert error.reason == "MODEL_NOT_LOADED" and "ferry models load a" in error.message
    assert closed == ["pair", "a"] and isinstance(models["b"], _Up)
    again = await repository.load("a")
    assert isinstance(again, _Up) and models["a"] is again
    assert await repository.load("a") is again  # loading a served model changes nothing


async def test_unknown_models_are_not_found_naming_the_configured_ones() -> None:
    repository, _ = _repository(set(), [])
    for call in (repository.load, repository.unload):
        with pytest.raises(NotFound) as caught:
            await call("resnet-9000")
        assert caught.value.reason == "MODEL_NOT_FOUND" and "a, b, pair" in caught.value.message


async def test_inference_does_not_wait_on_an_unreachable_nats_for_the_kept_state() -> None:
    # Serving must not depend on NATS: past the bounded wait, the configured models load as before.
    settings = InferenceSettings(nats_url=f"nats://127.0.0.1:{free_port()}")
    async with AsyncExitStack() as stack:
        assert await InferenceService(settings)._desired_states(stack) is None
