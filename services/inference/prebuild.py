"""Builds the kept AOTInductor libraries of the configured models ahead of a start:
``FERRY_INFERENCE_GRAPH=aoti python -m services.inference.prebuild``.

A model with ``graph = "aoti"`` builds its library at its first load (g++, minutes of CPU) and
serves from the kept one afterwards. Run this where the service's ``FERRY_INFERENCE_GRAPH_DIR``
will be (an image build with a compiler, a volume before a rollout), with the service's settings,
so that no start pays the build. Prints each model's graph and exits 1 if any model that asked
for ``aoti`` fell back to TorchScript (the log says why).
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from services.inference.models import registry
from services.inference.models.image import ImageClassifier
from services.inference.service import model_configs
from services.inference.settings import InferenceSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = InferenceSettings()
    fell_back: list[str] = []
    for config in model_configs(settings):
        if config.graph != "aoti" or config.is_ensemble:
            continue
        model = registry.build(config)
        if not isinstance(model, ImageClassifier):  # the only models with a graph to compile
            print(f"{config.name}:{config.version}: no AOTInductor graph for this kind of model", flush=True)
            continue
        started = time.monotonic()
        model.load(torch.device("cpu"))
        took = time.monotonic() - started
        print(f"{config.name}:{config.version}: {model.graph} ({took:.1f} s)", flush=True)
        if model.graph != "aoti":
            fell_back.append(f"{config.name}:{config.version}")
    if fell_back:
        print(f"served without an AOTInductor library: {', '.join(fell_back)}", file=sys.stderr)
    return 1 if fell_back else 0


if __name__ == "__main__":
    sys.exit(main())
