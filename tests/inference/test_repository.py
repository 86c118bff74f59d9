"""Loading and unloading models at runtime (services/inference/repository.py), with a stand-in builder.

The builder here returns a minimal served model: what is pinned is the repository's bookkeeping
(states, reasons, who may be unloaded, stacks closed); the e2e suite loads real weights.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack

import nats
import pytest
from grpc_health.v1 import health
from nats.js import JetStreamContext

from devstack.infra import free_port
from ferry.models.v1 import model_pb2
from services.common.errors import FailedPrecondition, NotFound
from services.common.readiness import Readiness
from services.inference.calls import Answered, Request
from services.inference.model_states import BUCKET, DesiredStates, open_bucket
from services.inference.models.config import ModelConfig
from services.inference.repository import ModelRepository, Recorder
from services.inference.served import FAILED, LOADING, UNLOADED, Place, Served, Unserved
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings


class _Up(Served):
    def describe(self) -> model_pb2.Model:
        return model_pb2.Model(name=f"models/{self.name}", ready=True, state=model_pb2.MODEL_STATE_READY)

    async def answer(self, request: Request, place: Place | None = None) -> Answered:
        raise AssertionError("not called here")


def _repository(
    broken: set[str], closed: list[str], kept: Callable[[ModelRepository], Recorder] | None = None
) -> tuple[ModelRepository, dict[str, Served]]:
    configs = [
        ModelConfig(name="a"),
        ModelConfig(name="b"),
        ModelConfig(name="pair", members=("a", "b")),
        ModelConfig(name="a", version="2"),
    ]
    models: dict[str, Served] = {}
    repository = ModelRepository(configs, models, drain_s=0.1)
    assert all(isinstance(m, Unserved) and m.state == LOADING for m in models.values())

    async def build(config: ModelConfig, stack: AsyncExitStack) -> Served:
        stack.callback(closed.append, f"{config.name}:{config.version}")
        if config.name in broken:
            raise RuntimeError("weights are broken")
        return _Up(config)

    repository.attach(build, kept(repository) if kept else None)
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
    assert closed == ["b:1"]  # what the failed load had started is stopped


async def test_unloading_a_member_leaves_its_ensemble_loaded_and_unavailable_naming_it() -> None:
    closed: list[str] = []
    repository, models = _repository(set(), closed)
    for name in ("a", "b", "pair"):
        await repository.load(name)
    unloaded = await repository.unload("a")
    assert isinstance(unloaded, Unserved) and unloaded.state == UNLOADED and models["a"] is unloaded
    assert closed == ["a:1"] and isinstance(models["b"], _Up) and isinstance(models["pair"], _Up)
    with pytest.raises(FailedPrecondition) as caught:
        repository.served("a")
    assert caught.value.reason == "MODEL_NOT_LOADED" and "ferry models load a:1" in caught.value.message
    # The ensemble stays loaded; its calls and its state name the member that is missing.
    with pytest.raises(FailedPrecondition) as caught:
        repository.served("pair")
    assert caught.value.reason == "MODEL_NOT_LOADED" and "'pair' calls 'a'" in caught.value.message
    pair = repository.describe("pair")
    assert pair.state == model_pb2.MODEL_STATE_UNAVAILABLE and not pair.ready and "a" in pair.state_message
    again = await repository.load("a")
    assert isinstance(again, _Up) and models["a"] is again and repository.served("pair") is models["pair"]
    assert repository.describe("pair").state == model_pb2.MODEL_STATE_READY
    assert await repository.load("a") is again  # loading a served model changes nothing


async def test_versions_load_side_by_side_and_the_default_moves_only_to_a_serving_version() -> None:
    closed: list[str] = []
    repository, models = _repository(set(), closed)
    one = await repository.load("a")
    assert repository.describe("a").default_version == "1"
    assert [(v.version, v.state) for v in repository.describe("a").versions] == [
        ("1", model_pb2.MODEL_STATE_READY),
        ("2", model_pb2.MODEL_STATE_LOADING),
    ]
    with pytest.raises(FailedPrecondition) as caught:
        await repository.set_default("a", "2")  # not loaded: calls would fail
    assert caught.value.reason == "MODEL_NOT_LOADED" and "ferry models load a:2" in caught.value.message
    two = await repository.load("a", "2")
    assert repository.served("a") is one and repository.served("a", "2") is two
    assert await repository.set_default("a", "2") is two
    assert models["a"] is two and repository.served("a") is two and repository.served("a", "1") is one
    with pytest.raises(NotFound) as missing:
        repository.served("a", "3")
    assert missing.value.reason == "MODEL_VERSION_NOT_FOUND" and "1, 2" in missing.value.message
    await repository.unload("a", "1")  # the other version keeps serving as the default
    assert repository.served("a") is two and closed == ["a:1"]
    await repository.unload("a")  # every version
    assert closed == ["a:1", "a:2"]
    # A replica converging to another's choice loads the version first.
    assert isinstance(await repository.set_default("a", "1", load=True), _Up) and repository.served("a")


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
        assert await InferenceService(settings)._kept_in_nats(stack) is None


async def test_an_admin_loading_an_ensemble_loads_the_members_it_calls_first() -> None:
    closed: list[str] = []
    repository, models = _repository(set(), closed)
    assert all(isinstance(models[n], Unserved) for n in ("a", "b", "pair"))
    await repository.load("pair", record=True)
    assert all(isinstance(models[n], _Up) for n in ("a", "b", "pair"))
    assert repository.describe("pair").state == model_pb2.MODEL_STATE_READY


async def test_a_model_of_the_file_that_was_not_configured_is_listed_unloaded_and_loads_at_runtime() -> None:
    settings = InferenceSettings(models=["minilm"], max_batch_size=2, warmup_batches=0, metrics_port=0)
    service = InferenceService(settings)
    async with AsyncExitStack() as stack:
        await service.start(stack, Readiness("inference", health.aio.HealthServicer()))
        lite0 = service.repository.describe("efficientnet-lite0")
        assert lite0.state == UNLOADED and "ferry models load efficientnet-lite0" in lite0.state_message
        with pytest.raises(FailedPrecondition) as caught:
            service.repository.served("efficientnet-lite0")
        assert caught.value.reason == "MODEL_NOT_LOADED"
        await service.repository.load("efficientnet-lite0", record=True)
        assert service.repository.describe("efficientnet-lite0").state == model_pb2.MODEL_STATE_READY


async def _replica(js: JetStreamContext, stack: AsyncExitStack) -> ModelRepository:
    """A replica's repository, keeping and following the bucket as the service does."""
    bucket = await open_bucket(js)
    states: list[DesiredStates] = []

    def keep(repository: ModelRepository) -> Recorder:
        states.append(DesiredStates(bucket, repository))
        return states[0]

    repository, _ = _repository(set(), [], keep)
    await repository.load("a")
    await states[0].follow(stack)
    return repository


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - the watcher applies changes in its own task
            await asyncio.sleep(0.05)


async def test_replicas_converge_to_an_admins_version_load_default_and_unload(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        client = await nats.connect(nats_url)
        stack.push_async_callback(client.close)
        js = client.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_key_value(BUCKET)
        first = await _replica(js, stack)
        second = await _replica(js, stack)
        # An admin's calls reach one replica; the other follows through the bucket.
        await first.load("a", "2", record=True)
        await first.set_default("a", "2", record=True)
        await _until(lambda: second.default_version("a") == "2")
        assert isinstance(second.served("a"), _Up) and second.served("a").config.version == "2"
        await first.unload("a", record=True)
        await _until(lambda: not second.describe("a").ready)
        assert [v.state for v in second.describe("a").versions] == [UNLOADED, UNLOADED]
        # A replica that starts later reads what to load and which default.
        desired = await DesiredStates(await open_bucket(js), first).read()
        assert desired.defaults == {"a": "2"}
        assert desired.loaded == {("a", "1"): False, ("a", "2"): False}
