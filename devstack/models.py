"""Which models ``ferry up`` serves: every model of the models file, as Triton and MLServer serve
every model of their repository, unless ``FERRY_INFERENCE_MODELS`` names some.

The inference service's own default stays one model (images and charts name theirs); the local
stack is where a user tries every shipped model, so it asks for all of them.
"""

from __future__ import annotations

import os

from services.inference.models.config import load_models_file
from services.inference.settings import InferenceSettings

VARIABLE = "FERRY_INFERENCE_MODELS"


def served_models() -> tuple[list[str], str]:
    """The models to serve and where that list came from (for the banner)."""
    chosen = os.environ.get(VARIABLE, "").strip()
    if chosen:
        return [m.strip() for m in chosen.split(",") if m.strip()], VARIABLE
    models_file = InferenceSettings().models_file
    return list(
        load_models_file(models_file)
    ), f"every model of {models_file.name}; {VARIABLE}=a,b serves fewer"
