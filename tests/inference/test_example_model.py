"""The example package in examples/ registers a model through the entry point and Ferry serves it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ferry.inference.v1 import inference_service_pb2 as pb
from ferry.inference.v1 import inference_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.inference.models import registry
from services.inference.settings import InferenceSettings
from tests.inference.conftest import encode, serve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ferry-example-model"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example package installed by pip into a folder of its own, put on sys.path."""
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(EXAMPLE)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))


async def test_the_example_model_is_found_and_served(installed_example: Path, tmp_path: Path) -> None:
    assert "color-stats" in registry.available()
    models_file = tmp_path / "models.toml"
    models_file.write_text('[models.color-stats]\nversion = "2"\noptions = { size = 32 }\n')
    settings = InferenceSettings(models=["color-stats"], models_file=models_file, warmup_batches=1)
    red = [[[220, 20, 20]] * 40] * 30
    red_png = encode(np.asarray(red, dtype=np.uint8), "PNG")
    blue = types_pb2.Tensor(datatype="FP32", shape=[3, 1, 2], fp32_contents=[0.1, 0.1, 0.2, 0.2, 0.9, 0.7])
    async with serve(settings) as (_, channel):
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        [model] = (await stub.ListModels(pb.ListModelsRequest())).models
        assert (model.name, model.version, model.task) == ("models/color-stats", "2", "image-statistics")
        assert model.batch_size_source == "measured"  # no max_batch_size: timed at warm-up
        request = pb.PredictRequest(
            model="color-stats",
            inputs=[types_pb2.Input(image=types_pb2.Image(content=red_png)), types_pb2.Input(tensor=blue)],
            top_k=1,
        )
        red_answer, blue_answer = (await stub.Predict(request)).results
    assert red_answer.output["dominant"] == "red"
    [mean] = red_answer.tensors
    assert (mean.name, mean.datatype, list(mean.shape)) == ("mean_rgb", "FP32", [3])
    assert mean.fp32_contents[0] == pytest.approx(220 / 255, abs=0.01)
    assert blue_answer.output["dominant"] == "blue"
    assert list(blue_answer.tensors[0].fp32_contents) == pytest.approx([0.1, 0.2, 0.8])
