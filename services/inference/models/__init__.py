"""Models Ferry can serve; one module per model, each registering a ``ModelSpec``."""

from services.inference.models.registry import ModelSpec, load_registry, register, resolve

__all__ = ["ModelSpec", "load_registry", "register", "resolve"]
