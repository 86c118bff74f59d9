"""Runs a loaded model on batches: its forward pass, then each item's postprocess."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from services.inference.models.contract import Answer, Item, Model

log = logging.getLogger(__name__)


def resolve_device(setting: str) -> torch.device:
    """Maps the ``device`` setting to a torch device; ``auto`` picks CUDA when there is one."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} was asked for but CUDA is not available; use cpu or auto")
    return device


class ModelRunner:
    """A model loaded on a device, ready to run batches."""

    def __init__(self, model: Model, device: torch.device) -> None:
        """Loads ``model``'s weights onto ``device`` (blocking: seconds)."""
        started = time.perf_counter()
        self.model = model
        self.device = device
        model.load(device)
        log.info("loaded %s on %s in %.1fs", model.name, device, time.perf_counter() - started)

    def run(self, items: Sequence[Item]) -> list[Answer]:
        """Runs one forward pass over ``items`` and returns each item's answer, in order."""
        raws = self.model.forward(items)
        if len(raws) != len(items):
            raise RuntimeError(
                f"model {self.model.name!r} returned {len(raws)} outputs for a batch of {len(items)}"
            )
        return [self.model.postprocess(raw, item.options) for item, raw in zip(items, raws, strict=True)]

    def time_batch(self, batch_size: int, repeats: int) -> float:
        """Fastest of ``repeats`` timed passes of ``batch_size`` example items.

        The fastest, not the mean: other processes only ever add time, so the minimum is the
        steadiest estimate of what the pass itself costs on a shared machine.
        """
        batch = [Item(self.model.example())] * batch_size
        times: list[float] = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.run(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - started)
        return min(times)

    def warm_up(self, batches: int, batch_size: int) -> None:
        """Runs ``batches`` example batches (full size, then single items) so first requests are not slow."""
        example = Item(self.model.example())
        for _ in range(batches):
            self.run([example] * batch_size)
            self.run([example])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
