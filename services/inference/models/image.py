"""Image classifiers: decode and transform in preprocess, a batched forward, softmax + top-k after."""

from __future__ import annotations

import io
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from services.inference.models import aoti
from services.inference.models.config import DEFAULT_GRAPH_DIR, ModelConfig
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

log = logging.getLogger(__name__)


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
        # A version may resize or crop otherwise (options in its table): same weights, other answers.
        options = config.options
        self.transform = replace(
            transform,
            resize=int(options.get("resize", transform.resize)),
            crop=int(options.get("crop", transform.crop)),
        )
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
        elif self.config.graph == "aoti":
            module = self._compiled(module, device)
        self.module, self.device = module, device
        self.graph = (
            "aoti"
            if isinstance(module, aoti.AotiGraph)
            else "torchscript"
            if isinstance(module, torch.jit.ScriptModule)
            else "eager"
        )

    def _compiled(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` as its kept AOTInductor library (built first if absent), or traced when it
        cannot be: a model that serves a slower graph beats one that does not serve."""
        example = self.example_batch(device)
        if device.type != "cpu":
            log.warning("model %s: graph aoti runs on the CPU only; it serves TorchScript", self.name)
            return trace(module, example)
        key = aoti.library_key(self.name, module, example, {"entry_point": self.config.entry_point})
        folder = Path(self.config.graph_dir or DEFAULT_GRAPH_DIR)
        started = time.monotonic()
        try:
            library, built = aoti.kept_library(module, example, folder / key)
            # One more than the instances: batch jobs' batcher (IDLE_JOB_ITEMS) runs its passes
            # beside them, and a caller's batch must not wait for a model held by a job's.
            graph = aoti.AotiGraph(library, self.config.instances + 1)
        except (aoti.GraphBuildError, OSError, RuntimeError) as err:
            log.warning(
                "model %s: its AOTInductor graph could not be built or loaded (%s); it serves its "
                "TorchScript graph",
                self.name,
                err,
            )
            return trace(module, example)
        how = "built" if built else "loaded the kept"
        took = time.monotonic() - started
        log.info("model %s: %s AOTInductor graph %s in %.1f s", self.name, how, library, took)
        return graph

    def preprocess(self, item: ModelInput) -> torch.Tensor | npt.NDArray[np.float32]:
        """An image's uint8 pixels, resized and cropped (decoded on the model's device: nvJPEG on
        a GPU); a tensor input must already have the input shape (and be normalised)."""
        self.check_kind(item)
        if item.kind == IMAGE:
            return self.transform.pixels(item.image, self.device)
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
        with torch.inference_mode():
            probabilities = torch.softmax(self.module(self.batch_pixels(batch)).float(), dim=1)
        return list(probabilities.cpu().numpy())

    def batch_pixels(self, batch: Sequence[Item]) -> torch.Tensor:
        """The batch as one normalised float tensor, channels_last, on the model's device.

        Images arrive as uint8 pixels and are normalised here, all at once; tensor inputs arrive
        normalised. A batch of images only (the usual one) is stacked and normalised in one go.
        """
        features = [item.features for item in batch]
        if all(isinstance(f, torch.Tensor) for f in features):
            return self.transform.normalize(torch.stack(features).to(self.device, non_blocking=True))
        pixels = torch.stack([self._normalized(f) for f in features])
        return pixels.contiguous(memory_format=torch.channels_last)

    def _normalized(self, features: torch.Tensor | npt.NDArray[np.float32]) -> torch.Tensor:
        if isinstance(features, torch.Tensor):
            return self.transform.normalize(features.unsqueeze(0).to(self.device))[0]
        return torch.from_numpy(features).to(self.device, non_blocking=True)

    def postprocess(self, raw: npt.NDArray[np.float32], options: Options) -> Answer:
        """The top-k classes; the full distribution stays on the answer for ensembles."""
        return Answer(classes=top_classes(raw, self.labels, options.top_k), probabilities=raw)

    def example(self) -> Any:
        """A black image's pixels, as ``preprocess`` makes them (uint8, height, width, channels)."""
        crop = self.transform.crop
        return torch.zeros((crop, crop, 3), dtype=torch.uint8, device=self.device)

    def example_batch(self, device: torch.device) -> torch.Tensor:
        """Two example images as one normalised channels_last batch on ``device``: what tracing runs."""
        return self.transform.normalize(torch.stack([self.example()] * 2).to(device))


# TorchScript keeps every module type it traces, with its methods' graphs, in one process-wide
# compilation unit that nothing empties, and ``freeze`` clones the frozen module (its weights folded
# into the graph as constants) into the same unit: every load of a traced model stayed in memory
# after its unload, about 50 MiB a load of mobilenet-v2 (docs/inference.md). One trace at a time:
# emptying the unit after one trace must not delete the types of another trace under way.
_TRACING = threading.Lock()


def trace(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """``module`` traced and frozen: one TorchScript call per forward pass, batch norms folded.

    Why: an eager module returns to Python between layers and takes the GIL back each time; in a
    busy server (gRPC, decode threads) every take can wait up to the switch interval, which
    doubled efficientnet-lite0's forward pass. A traced graph runs in C++ and holds the GIL only
    on entry and exit. The batch dimension stays free: convolutions trace shape-generically, and
    the service's warm-up and the tests run other batch sizes through it. The traced module is
    moved to a compilation unit of its own before it is frozen, so an unload gives all of it back.
    """
    with warnings.catch_warnings():
        # torch 2.x marks TorchScript deprecated in favour of torch.compile, which needs a C++
        # toolchain at run time and compiles per shape; TorchScript still ships and works.
        warnings.simplefilter("ignore", FutureWarning)
        with _TRACING:
            # Something else keeps TorchScript there (a model of another package, say): emptying
            # the unit would pull its methods from under it, so this trace's types stay behind.
            shared = bool(torch.jit._state._python_cu.get_functions())  # type: ignore[func-returns-value]
            with torch.inference_mode():
                traced = torch.jit.trace(module, example)  # type: ignore[no-untyped-call]
            own = _reloaded(traced, example.device)
            del traced
            if shared:
                log.warning("TorchScript's shared unit is in use: this trace stays in memory after unload")
            else:
                _forget_traces()
        frozen: nn.Module = torch.jit.freeze(own.eval())
        return frozen


def _reloaded(module: torch.jit.ScriptModule, device: torch.device) -> torch.jit.ScriptModule:
    """``module`` saved and loaded again: ``torch.jit.load`` gives it a compilation unit of its own,
    freed with it."""
    archive = io.BytesIO()
    torch.jit.save(module, archive)
    archive.seek(0)
    loaded: torch.jit.ScriptModule = torch.jit.load(archive, map_location=device)  # type: ignore[no-untyped-call]
    return loaded


def _forget_traces() -> None:
    """Empties the process-wide compilation unit the traces were made in, as torch's own test suite
    does between tests (``torch.testing._internal.jit_utils.clear_class_registry``).

    Called only when the unit held nothing before this trace: every TorchScript module the
    inference process makes is made by ``trace`` and moved out first (torchvision and transformers
    put nothing there). A model of another package that compiles TorchScript in a thread of its
    own at the very moment this one traces is not guarded against.
    """
    torch._C._jit_clear_class_registry()
    torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()
    torch.jit._state._clear_class_state()
