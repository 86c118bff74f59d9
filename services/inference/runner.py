"""Runs a loaded torch module on batches: device placement, memory layout, softmax and top-k."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from services.inference.models.registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One preprocessed input and how many classes its caller wants."""

    pixels: npt.NDArray[np.float32]
    top_k: int


@dataclass(frozen=True)
class TopK:
    """The best classes for one item, highest probability first."""

    indices: list[int]
    scores: list[float]


def resolve_device(setting: str) -> torch.device:
    """Maps the ``device`` setting to a torch device; ``auto`` picks CUDA when there is one."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} was asked for but CUDA is not available; use cpu or auto")
    return device


class ModelRunner:
    """A model loaded on a device, ready to run batches (from one thread at a time)."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        """Loads ``spec``'s weights onto ``device`` in eval mode (blocking: seconds)."""
        started = time.perf_counter()
        self.spec = spec
        self.device = device
        # channels_last lets CPU (oneDNN) and GPU convolutions skip layout conversions; on a
        # 2-core CPU it nearly doubles efficientnet-lite0's throughput (see FACTS).
        module = spec.load().eval().to(device).to(memory_format=torch.channels_last)
        module.requires_grad_(False)
        self.module = module
        log.info("loaded %s on %s in %.1fs", spec.name, device, time.perf_counter() - started)

    def run(self, items: Sequence[Item]) -> list[TopK]:
        """Runs one forward pass over ``items`` and returns each item's top classes."""
        batch = torch.from_numpy(np.stack([item.pixels for item in items]))
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        k = min(max(item.top_k for item in items), len(self.spec.labels))
        with torch.inference_mode():
            probabilities = torch.softmax(self.module(batch).float(), dim=1)
            scores, indices = torch.topk(probabilities, k, dim=1)
        scores_list: list[list[float]] = scores.cpu().tolist()
        indices_list: list[list[int]] = indices.cpu().tolist()
        return [
            TopK(indices=row_indices[: item.top_k], scores=row_scores[: item.top_k])
            for item, row_indices, row_scores in zip(items, indices_list, scores_list, strict=True)
        ]

    def time_batch(self, batch_size: int, repeats: int) -> float:
        """Fastest of ``repeats`` timed forward passes of ``batch_size`` dummy items.

        The fastest, not the mean: other processes only ever add time, so the minimum is the
        steadiest estimate of what the pass itself costs on a shared machine.
        """
        batch = [Item(np.zeros(self.spec.input_shape, dtype=np.float32), 1)] * batch_size
        times: list[float] = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.run(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - started)
        return min(times)

    def warm_up(self, batches: int, batch_size: int) -> None:
        """Runs ``batches`` dummy batches (full size, then single items) so first requests are not slow."""
        dummy = np.zeros(self.spec.input_shape, dtype=np.float32)
        for _ in range(batches):
            self.run([Item(dummy, 1)] * batch_size)
            self.run([Item(dummy, 1)])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
