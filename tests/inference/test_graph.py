"""The traced graph (``graph = "torchscript"``, the default) answers as the eager module does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.inference.models.config import ModelConfig
from services.inference.models.contract import Item, ModelInput, Options
from services.inference.models.registry import build
from services.inference.runner import ModelRunner
from tests.inference.conftest import CAT_CLASSES, ESPRESSO

CPU = torch.device("cpu")


@pytest.mark.parametrize("model", ["efficientnet-lite0", "mobilenet-v2"])
def test_the_traced_graph_matches_the_eager_module_at_every_batch_size(
    model: str, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    eager = ModelRunner(build(ModelConfig(name=model, graph="eager")), CPU)
    traced = ModelRunner(build(ModelConfig(name=model, graph="torchscript")), CPU)
    assert isinstance(traced.model.module, torch.jit.ScriptModule)
    assert not isinstance(eager.model.module, torch.jit.ScriptModule)
    photos = [
        Item(eager.model.preprocess(ModelInput(kind="image", image=content)), Options(top_k=3))
        for content in (cat_jpeg, coffee_jpeg)
    ]
    # Traced with a batch of two; other sizes must run through the same graph.
    for size in (1, 3, 8):
        batch = [photos[i % 2] for i in range(size)]
        expected, got = eager.run(batch), traced.run(batch)
        for want, answer in zip(expected, got, strict=True):
            assert [c.index for c in answer.classes] == [c.index for c in want.classes]
            np.testing.assert_allclose(answer.probabilities, want.probabilities, atol=1e-5)
    cat, coffee = traced.run(photos)
    assert cat.classes[0].index in CAT_CLASSES and coffee.classes[0].index == ESPRESSO
