"""The model in this process, through Ferry's own model code: what the benchmarks compare with.

The same ``ferry.models`` entry point, ``ModelRunner`` and preprocessing as the inference service,
with no server around them: the floor of latency and the ceiling of throughput on this machine.
"""

from __future__ import annotations

from services.inference.models.config import DEFAULT_GRAPH, Graph, ModelConfig
from services.inference.models.contract import Item, ModelInput, Options
from services.inference.models.registry import build
from services.inference.runner import ModelRunner, resolve_device

TOP_K = 5


def load(model: str, graph: Graph = DEFAULT_GRAPH) -> ModelRunner:
    """Builds ``model`` from its entry point (its forward pass run as ``graph``) and loads it on the
    service's default device."""
    return ModelRunner(build(ModelConfig(name=model, graph=graph)), resolve_device("auto"))


def item(runner: ModelRunner, image: bytes) -> Item:
    """One encoded image, decoded and preprocessed as the service does it (the decode is timed)."""
    features = runner.model.preprocess(ModelInput(kind="image", image=image))
    return Item(features, Options(top_k=TOP_K))
