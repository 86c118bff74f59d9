"""Image classifiers: decode and transform in preprocess, a batched forward, softmax + top-k after."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from services.inference.models.config import ModelConfig
from services.inference.models.contract import (
    IMAGE,
    TENSOR,
    Answer,
    ClassScore,
    InvalidInput,
    Item,
    Model,
    ModelInput,
    Options,
    TensorInfo,
)
from services.inference.preprocessing import ImageTransform


def top_classes(probabilities: npt.NDArray[np.float32], labels: Sequence[str], k: int) -> list[ClassScore]:
    """The ``k`` most probable classes, highest first."""
    k = min(k, len(probabilities))
    best = np.argpartition(-probabilities, k - 1)[:k]
    best = best[np.argsort(-probabilities[best], kind="stable")]
    return [ClassScore(int(i), labels[int(i)], float(probabilities[i])) for i in best]


class ImageClassifier(Model):
    """A torch image classifier: encoded image (or an FP32 tensor already transformed) -> classes.

    Args:
        config: The model's settings.
        build_module: Builds the module with its weights loaded from local files.
        transform: The resize/crop/normalise recipe the weights were trained with.
        labels: Class names, indexed as the module's output.
    """

    task = "image-classification"
    kinds = frozenset({IMAGE, TENSOR})

    def __init__(
        self,
        config: ModelConfig,
        build_module: Callable[[], nn.Module],
        transform: ImageTransform,
        labels: Sequence[str],
        display_name: str,
        description: str,
    ) -> None:
        super().__init__(config)
        self._build_module = build_module
        self.transform = transform
        self.labels = tuple(labels)
        self.display_name = display_name
        self.description = description
        self.inputs = (TensorInfo("image", "BYTES", (1,)),)
        self.outputs = (TensorInfo("classes", "BYTES", (-1,)),)
        self.device = torch.device("cpu")
        self.module: nn.Module | None = None

    def load(self, device: torch.device) -> None:
        """Builds the module, in eval mode and channels_last on ``device``."""
        # channels_last lets CPU (oneDNN) and GPU convolutions skip layout conversions; on a
        # 2-core CPU it nearly doubles efficientnet-lite0's throughput (see FACTS).
        module = self._build_module().eval().to(device).to(memory_format=torch.channels_last)
        module.requires_grad_(False)
        if self.config.graph == "torchscript":
            module = trace(module, self.example_batch(device))
        self.module, self.device = module, device

    def preprocess(self, item: ModelInput) -> npt.NDArray[np.float32]:
        """Decodes and transforms an image; a tensor input must already have the input shape."""
        self.check_kind(item)
        if item.kind == IMAGE:
            return self.transform.decode(item.image)
        assert item.tensor is not None
        if tuple(item.tensor.shape) != self.transform.input_shape:
            raise InvalidInput(
                f"its tensor has shape {list(item.tensor.shape)} and model {self.name!r} takes "
                f"{list(self.transform.input_shape)} (channels, height, width; already normalised)"
            )
        return item.tensor

    def forward(self, batch: Sequence[Item]) -> list[npt.NDArray[np.float32]]:
        """Softmax probabilities of every class, one row per item."""
        assert self.module is not None, "load() first"
        pixels = torch.from_numpy(np.stack([item.features for item in batch]))
        pixels = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probabilities = torch.softmax(self.module(pixels).float(), dim=1)
        return list(probabilities.cpu().numpy())

    def postprocess(self, raw: npt.NDArray[np.float32], options: Options) -> Answer:
        """The top-k classes; the full distribution stays on the answer for ensembles."""
        return Answer(classes=top_classes(raw, self.labels, options.top_k), probabilities=raw)

    def example(self) -> Any:
        """A black image, already transformed."""
        return np.zeros(self.transform.input_shape, dtype=np.float32)

    def example_batch(self, device: torch.device) -> torch.Tensor:
        """Two example images as one channels_last batch on ``device``: what tracing runs."""
        pixels = torch.from_numpy(np.stack([self.example()] * 2)).to(device)
        return pixels.contiguous(memory_format=torch.channels_last)


def trace(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """``module`` traced and frozen: one TorchScript call per forward pass, batch norms folded.

    Why: an eager module returns to Python between layers and takes the GIL back each time; in a
    busy server (gRPC, decode threads) every take can wait up to the switch interval, which
    doubled efficientnet-lite0's forward pass. A traced graph runs in C++ and holds the GIL only
    on entry and exit. The batch dimension stays free: convolutions trace shape-generically, and
    the service's warm-up and the tests run other batch sizes through it.
    """
    with warnings.catch_warnings():
        # torch 2.x marks TorchScript deprecated in favour of torch.compile, which needs a C++
        # toolchain at run time and compiles per shape; TorchScript still ships and works.
        warnings.simplefilter("ignore", FutureWarning)
        with torch.inference_mode():
            traced = torch.jit.trace(module, example)  # type: ignore[no-untyped-call]
        frozen: nn.Module = torch.jit.freeze(traced.eval())
        return frozen
