"""Finding models: Python entry points of the group ``ferry.models``.

A package declares, in its pyproject.toml::

    [project.entry-points."ferry.models"]
    my-model = "my_package.model:build"

where ``build(config: ModelConfig) -> Model``. Only the entry points of the configured models
are imported, so a model whose package (or one of its dependencies) is missing fails alone, with
a message that says what to install, while the others load.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from services.inference.models.config import ModelConfig
from services.inference.models.contract import Model

GROUP = "ferry.models"

#: Builds a model (without loading its weights) from its settings.
Factory = Callable[[ModelConfig], Model]


class ModelUnavailable(RuntimeError):
    """A configured model cannot be built: its package or a dependency is missing, or it failed."""


def available() -> dict[str, EntryPoint]:
    """Every model entry point installed, by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def build(config: ModelConfig) -> Model:
    """Imports ``config``'s entry point and builds the model.

    Raises:
        ModelUnavailable: No such entry point, or importing or building it failed; the message
            names the model, the missing module and what to do.
    """
    name = config.entry_point or config.name
    found = available().get(name)
    if found is None:
        raise ModelUnavailable(
            f"model {config.name!r}: no entry point {name!r} in group {GROUP!r}; install the package "
            f"that provides it (installed: {', '.join(sorted(available())) or 'none'})"
        )
    try:
        factory: Factory = found.load()
    except ImportError as err:
        missing = f" (missing module {err.name!r})" if err.name else ""
        raise ModelUnavailable(
            f"model {config.name!r} cannot be imported from {found.value!r}{missing}: {err}; "
            "install its package and dependencies"
        ) from err
    try:
        return factory(config)
    except Exception as err:
        raise ModelUnavailable(f"model {config.name!r} could not be built: {err}") from err
