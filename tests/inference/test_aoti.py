"""The AOTInductor graph (``graph = "aoti"``): built once and kept, answers as the traced graph does,
lets other threads run Python during a pass, and a model whose library cannot be made serves
TorchScript.

One small classifier (real g++ and inductor; about half a minute to compile on 2 cores) stands in
for the shipped models, whose libraries take minutes: the code path is the same.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from services.inference.models import aoti
from services.inference.models.config import ModelConfig
from services.inference.models.contract import Item, ModelInput, Options
from services.inference.models.image import ImageClassifier
from services.inference.preprocessing import ImageTransform

CPU = torch.device("cpu")
LABELS = tuple(f"class {i}" for i in range(10))
SIDE = 32


def small_classifier() -> nn.Module:
    """The same weights at every call, as a model's factory loads them from its files."""
    generator = torch.Generator().manual_seed(7)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()]
    for _ in range(5):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
    module = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(LABELS)))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


def classifier(graph: str, graph_dir: Path) -> ImageClassifier:
    model = ImageClassifier(
        ModelConfig(name="small", graph=graph, graph_dir=str(graph_dir)),  # type: ignore[arg-type]
        small_classifier,
        ImageTransform(resize=SIDE, crop=SIDE),
        LABELS,
        "small",
        "a small classifier for the tests",
    )
    model.load(CPU)
    return model


def photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("graphs"))


@pytest.fixture(scope="module")
def compiled(graph_dir: Path) -> ImageClassifier:
    """The classifier with its library built into ``graph_dir`` (the module's one compile)."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler here: AOTInductor cannot build (the fallback is tested below)")
    model = classifier("aoti", graph_dir)
    assert isinstance(model.module, aoti.AotiGraph), "the library was not built: see the log"
    assert model.graph == "aoti"
    return model


def test_the_compiled_graph_answers_as_the_traced_one_at_every_batch_size(compiled: ImageClassifier) -> None:
    traced = classifier("torchscript", Path("unused"))
    assert isinstance(traced.module, torch.jit.ScriptModule)
    photos = [ModelInput(kind="image", image=photo(i)) for i in range(5)]
    items = [Item(traced.preprocess(given), Options(top_k=3)) for given in photos]
    for size in (1, 3, 5):
        want, got = traced.forward(items[:size]), compiled.forward(items[:size])
        for expected, answer in zip(want, got, strict=True):
            np.testing.assert_allclose(answer, expected, atol=1e-5)


def test_a_later_load_uses_the_kept_library_without_building(
    compiled: ImageClassifier, graph_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(compiled.module, aoti.AotiGraph)
    library = compiled.module.library
    built_at = library.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="services.inference.models.image"):
        again = classifier("aoti", graph_dir)
    assert isinstance(again.module, aoti.AotiGraph) and again.module.library == library
    assert library.stat().st_mtime_ns == built_at
    assert "loaded the kept AOTInductor graph" in caplog.text
    assert sorted(p.suffix for p in graph_dir.iterdir()) == [".lock", ".so"]


def test_other_threads_run_python_while_a_pass_runs(compiled: ImageClassifier) -> None:
    """The library runs outside the GIL (torch's own loader holds it for the whole pass)."""
    assert isinstance(compiled.module, aoti.AotiGraph)
    graph = compiled.module
    batch = torch.rand(aoti.MAX_BATCH, 3, SIDE, SIDE).contiguous(memory_format=torch.channels_last)
    inside, entered = threading.Event(), threading.Event()

    def one_pass() -> None:
        inside.set()
        entered.set()
        graph(batch)
        inside.clear()

    worker = threading.Thread(target=one_pass)
    seen_inside = 0
    with torch.inference_mode():
        worker.start()
        entered.wait()
        # Each sleep lets the worker take the GIL; a pass that kept it would give it back only
        # when done, so this thread would wake only to find the pass over.
        while worker.is_alive():
            time.sleep(0.01)
            seen_inside += inside.is_set()
    worker.join()
    assert seen_inside >= 3, "this thread never ran while the compiled pass ran"


def test_a_model_whose_library_cannot_be_made_serves_torchscript(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "graphs"
    not_a_folder.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="services.inference.models.image"):
        model = classifier("aoti", not_a_folder)
    assert isinstance(model.module, torch.jit.ScriptModule) and model.graph == "torchscript"
    assert "could not be built or loaded" in caplog.text and "serves its TorchScript graph" in caplog.text
    (answer,) = model.forward([Item(model.preprocess(ModelInput(kind="image", image=photo(0))), Options())])
    assert answer.shape == (len(LABELS),)


def test_the_library_key_changes_with_the_weights() -> None:
    module, example = small_classifier(), torch.rand(2, 3, SIDE, SIDE)
    key = aoti.library_key("small", module, example, {})
    assert key == aoti.library_key("small", small_classifier(), example, {})
    with torch.no_grad():
        next(module.parameters())[0, 0, 0, 0] += 1
    assert aoti.library_key("small", module, example, {}) != key
    assert aoti.library_key("small", small_classifier(), torch.rand(2, 3, 16, 16), {}) != key


def test_prebuild_fails_naming_a_model_that_fell_back(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "graphs"
    not_a_folder.write_text("a file where the folder should be")
    env = {
        **os.environ,
        "FERRY_INFERENCE_GRAPH": "aoti",
        "FERRY_INFERENCE_GRAPH_DIR": str(not_a_folder),
        "FERRY_INFERENCE_MODELS": "efficientnet-lite0,minilm",
    }
    command = [sys.executable, "-m", "services.inference.prebuild"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "efficientnet-lite0:1: torchscript" in done.stdout
    assert "minilm:1: no AOTInductor graph for this kind of model" in done.stdout
    assert "served without an AOTInductor library: efficientnet-lite0:1" in done.stderr


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no error in __del__
def test_a_library_that_does_not_load_is_refused_cleanly(tmp_path: Path) -> None:
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a shared library")
    with pytest.raises(OSError):
        aoti.AotiGraph(broken)
