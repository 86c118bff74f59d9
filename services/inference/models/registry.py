"""The model registry: each model module registers one ``ModelSpec`` under its name.

Adding a model is adding one module to this package that calls ``register``; every module in
the package is imported by ``load_registry``, so no list elsewhere needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from torch import nn

#: Turns an encoded input into the model's input array; raises preprocessing.InvalidImage.
Preprocess = Callable[[bytes], npt.NDArray[np.float32]]

_REGISTRY: dict[str, ModelSpec] = {}


@dataclass(frozen=True)
class ModelSpec:
    """Everything Ferry needs to serve one model."""

    name: str
    """Model id used in requests and settings, for example ``efficientnet-lite0``."""
    display_name: str
    """Short human-readable title."""
    description: str
    """What the model does and where its weights come from."""
    task: str
    """What the model does, for example ``image-classification``."""
    labels: Sequence[str]
    """Class names, indexed as the model's output."""
    load: Callable[[], nn.Module]
    """Builds the module with its weights loaded from local files (never a download)."""
    preprocess: Preprocess
    """Decodes and transforms one input's bytes; runs in a worker thread."""
    input_shape: tuple[int, ...]
    """Shape of one preprocessed input, used for warm-up batches."""


def register(spec: ModelSpec) -> ModelSpec:
    """Adds ``spec`` to the registry; a second model with the same name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def load_registry() -> dict[str, ModelSpec]:
    """Imports every model module in this package and returns the registry, by name."""
    package = importlib.import_module(__package__ or "services.inference.models")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "registry":
            importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(_REGISTRY)


def resolve(names: Sequence[str]) -> list[ModelSpec]:
    """Returns the specs of ``names``, in order.

    Raises:
        ValueError: When a name is not registered; the message lists the available models.
    """
    registry = load_registry()
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise ValueError(
            f"unknown model(s) {', '.join(map(repr, unknown))} in FERRY_INFERENCE_MODELS; "
            f"available: {', '.join(sorted(registry))}"
        )
    return [registry[name] for name in dict.fromkeys(names)]
