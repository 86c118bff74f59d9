"""``color-stats``: the mean colour of a picture, as a tensor and as a JSON object.

A complete Ferry model in a few lines, built on the contract in
``services.inference.models.contract``: preprocess decodes (in Ferry's decode threads),
forward runs one batched torch reduction, postprocess shapes each item's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from services.inference.models.config import ModelConfig
from services.inference.models.contract import (
    IMAGE,
    TENSOR,
    Answer,
    InvalidInput,
    Item,
    Model,
    ModelInput,
    Options,
    TensorInfo,
)
from services.inference.preprocessing import ImageTransform

CHANNELS = ("red", "green", "blue")


class ColorStats(Model):
    """Mean red, green and blue of a picture (0 to 1), and the dominant channel."""

    display_name = "Colour statistics (example package)"
    description = "Mean RGB of a picture and its dominant channel; a worked example of a model package."
    task = "image-statistics"
    kinds = frozenset({IMAGE, TENSOR})
    inputs = (TensorInfo("image", "BYTES", (1,)),)
    outputs = (TensorInfo("mean_rgb", "FP32", (3,)), TensorInfo("output", "BYTES", (1,)))

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        size = int(config.options.get("size", 64))
        # Scale to [0, 1] only: mean 0, std 1 leave the colours as they are.
        self.transform = ImageTransform(resize=size, crop=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.device = torch.device("cpu")

    def load(self, device: torch.device) -> None:
        """Nothing to load: the model is a reduction."""
        self.device = device

    def preprocess(self, item: ModelInput) -> npt.NDArray[np.float32]:
        """An image is decoded and scaled; a tensor must be (3, height, width) in [0, 1]."""
        self.check_kind(item)
        if item.kind == IMAGE:
            return self.transform.decode(item.image)
        assert item.tensor is not None
        if item.tensor.ndim != 3 or item.tensor.shape[0] != 3:
            raise InvalidInput(f"its tensor has shape {list(item.tensor.shape)}; send (3, height, width)")
        return item.tensor

    def forward(self, batch: Sequence[Item]) -> list[npt.NDArray[np.float32]]:
        """The mean of each channel of each item (items may differ in size, so one at a time)."""
        with torch.inference_mode():
            means = [torch.from_numpy(item.features).to(self.device).mean(dim=(1, 2)) for item in batch]
            return list(torch.stack(means).cpu().numpy())

    def postprocess(self, raw: npt.NDArray[np.float32], options: Options) -> Answer:
        """The mean RGB as a tensor, and a JSON object naming the dominant channel."""
        dominant = CHANNELS[int(np.argmax(raw))]
        output = {"mean_rgb": [round(float(v), 4) for v in raw], "dominant": dominant}
        return Answer(tensors={"mean_rgb": raw}, output=output)

    def example(self) -> Any:
        """A grey picture."""
        return np.full((3, 8, 8), 0.5, dtype=np.float32)


def build(config: ModelConfig) -> ColorStats:
    """The ``ferry.models`` entry point ``color-stats``."""
    return ColorStats(config)
