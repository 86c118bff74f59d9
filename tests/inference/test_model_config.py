"""The models file and its environment overrides; discovery through entry points; FAILED models."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ferry.inference.v1 import inference_service_pb2 as pb
from ferry.inference.v1 import inference_service_pb2_grpc
from ferry.models.v1 import model_pb2
from ferry.types.v1 import types_pb2
from services.inference.models.config import ModelsFileError, env_key
from services.inference.service import InferenceService, model_configs
from services.inference.settings import InferenceSettings
from tests.inference.conftest import CAT_CLASSES, serve


def models_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_the_shipped_file_declares_every_shipped_model() -> None:
    everything = model_configs(InferenceSettings(models=["imagenet-ensemble", "minilm", "agree"]))
    configs = {c.name: c for c in everything if c.version == "1"}
    # Members load before their ensemble.
    assert list(configs) == ["efficientnet-lite0", "mobilenet-v2", "imagenet-ensemble", "minilm", "agree"]
    assert configs["imagenet-ensemble"].members == ("efficientnet-lite0", "mobilenet-v2")
    assert configs["minilm"].max_batch_size == 32
    assert Path(configs["agree"].notebook).is_file()
    # Other versions follow the defaults: the model's table with the version's fields over it.
    [two] = [c for c in everything if c.version != "1"]
    assert (two.name, two.version, two.options, two.instances) == ("mobilenet-v2", "2", {"resize": 224}, 2)
    # A notebook's required models load with it, before it.
    alone = [c.name for c in model_configs(InferenceSettings(models=["agree"])) if c.version == "1"]
    assert alone == ["efficientnet-lite0", "mobilenet-v2", "agree"]
    # The file's other tables are known too (UNLOADED at start; an admin may load them).
    known = [c.name for c in model_configs(InferenceSettings(models=["agree"]), every_table=True)]
    assert known[:3] == alone and {"minilm", "imagenet-ensemble"} <= set(known)


def test_an_unknown_field_fails_the_start_naming_it(tmp_path: Path) -> None:
    path = models_file(tmp_path, "[models.efficientnet-lite0]\nmax_batch_sise = 4\n")
    with pytest.raises(ModelsFileError, match=r"'efficientnet-lite0'.*max_batch_sise.*not permitted"):
        InferenceService(InferenceSettings(models_file=path))
    path = models_file(tmp_path, '[model.efficientnet-lite0]\nversion = "2"\n')
    with pytest.raises(ModelsFileError, match=r"unknown top-level key.*model"):
        InferenceService(InferenceSettings(models_file=path))


def test_the_environment_overrides_the_file_which_overrides_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = models_file(
        tmp_path,
        '[models.efficientnet-lite0]\nversion = "7"\nmax_batch_size = 4\nmax_queue = 9\ninstances = 2\n',
    )
    [config] = model_configs(InferenceSettings(models_file=path))
    assert (config.version, config.max_batch_size, config.max_queue, config.instances) == ("7", 4, 9, 2)
    assert (config.device, config.max_batch_delay_ms) == ("auto", 0)  # service-wide defaults
    # A service-wide setting given explicitly beats the file; a per-model variable beats both.
    monkeypatch.setenv(env_key("efficientnet-lite0", "max_queue"), "3")
    [config] = model_configs(InferenceSettings(models_file=path, max_batch_size=2, max_queue=5))
    assert (config.max_batch_size, config.max_queue) == (2, 3)
    monkeypatch.setenv(env_key("efficientnet-lite0", "instances"), "zero")
    with pytest.raises(ModelsFileError, match="instances"):
        model_configs(InferenceSettings(models_file=path))


def test_the_graph_is_torchscript_unless_a_model_or_the_service_says_eager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = models_file(tmp_path, '[models.efficientnet-lite0]\n[models.mobilenet-v2]\ngraph = "eager"\n')
    names = ["efficientnet-lite0", "mobilenet-v2"]
    graphs = [c.graph for c in model_configs(InferenceSettings(models_file=path, models=names))]
    assert graphs == ["torchscript", "eager"]
    service_wide = InferenceSettings(models_file=path, models=names, graph="eager")
    assert [c.graph for c in model_configs(service_wide)] == ["eager", "eager"]
    monkeypatch.setenv(env_key("efficientnet-lite0", "graph"), "onnx")
    with pytest.raises(ModelsFileError, match="graph"):
        model_configs(InferenceSettings(models_file=path, models=names))


@pytest.fixture
def broken_package(tmp_path: Path) -> Iterator[None]:
    """An installed distribution whose model imports a package that is not installed."""
    site = tmp_path / "site"
    info = site / "broken_model-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-model\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ferry.models]\nbroken = broken_model:build\n")
    (site / "broken_model.py").write_text("import package_that_is_not_installed\n")
    sys.path.insert(0, str(site))
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("broken_model", None)


async def test_a_model_whose_package_is_missing_fails_alone(
    tmp_path: Path, broken_package: None, cat_jpeg: bytes
) -> None:
    path = models_file(
        tmp_path,
        '[models.efficientnet-lite0]\n[models.broken]\nversion = "3"\n'
        '[models.lost-notebook]\nentry_point = "notebook"\nnotebook = "missing.ipynb"\n',
    )
    settings = InferenceSettings(
        models=["broken", "efficientnet-lite0", "lost-notebook"],
        models_file=path,
        device="cpu",
        max_batch_size=2,
        warmup_batches=0,
    )
    async with serve(settings) as (_, channel):
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        models = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
        broken = models["models/broken"]
        assert (broken.state, broken.ready, broken.version) == (model_pb2.MODEL_STATE_FAILED, False, "3")
        assert "package_that_is_not_installed" in broken.state_message
        assert "install" in broken.state_message
        assert models["models/lost-notebook"].state == model_pb2.MODEL_STATE_FAILED
        assert "missing.ipynb" in models["models/lost-notebook"].state_message
        assert models["models/efficientnet-lite0"].state == model_pb2.MODEL_STATE_READY

        cat = types_pb2.Input(image=types_pb2.Image(content=cat_jpeg))
        answer = await stub.Predict(pb.PredictRequest(model="efficientnet-lite0", inputs=[cat], top_k=1))
        assert answer.results[0].classes[0].index in CAT_CLASSES
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(pb.PredictRequest(model="broken", inputs=[cat], top_k=1))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "failed to load" in (caught.value.details() or "")


async def test_the_start_fails_when_no_model_loads(tmp_path: Path, broken_package: None) -> None:
    settings = InferenceSettings(models=["broken"], models_file=models_file(tmp_path, ""), warmup_batches=0)
    with pytest.raises(RuntimeError, match=r"no model could be loaded.*package_that_is_not_installed"):
        async with serve(settings):
            pass
