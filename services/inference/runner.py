"""Runs a loaded model on batches: its forward pass, then each item's postprocess."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from services.inference.models.contract import Answer, Item, Model
from services.inference.tuning import Round

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

    @contextmanager
    def side_by_side(self, instances: int, threads: int) -> Iterator[Callable[[int], Round]]:
        """A timer of ``instances`` passes run at once, each in a thread of its own with ``threads``
        intra-op threads: called with a batch size, it returns the seconds from the first pass's
        start to the last one's end, and the CPU seconds this process spent meanwhile.

        That is how a model with ``instances`` batch threads runs under load (each running batch
        takes an equal share of the cores: ``service.intra_op_share``), so it is the shape a batch
        size must do well in: on 2 cores one two-thread pass gains from a larger batch (its OpenMP
        partner waits less per image) while two one-thread passes side by side do not
        (docs/inference.md, *Batch size*). The threads live as long as the block: a new thread's
        first pass would build its OpenMP team inside the timing.
        """
        with ThreadPoolExecutor(instances, thread_name_prefix="time-batch") as pool:

            def time_passes(batch_size: int) -> Round:
                batch = [Item(self.model.example())] * batch_size
                start = threading.Barrier(instances)
                cpu_started = time.process_time()  # every thread's, OpenMP's workers included

                def one_pass() -> tuple[float, float]:
                    torch.set_num_threads(threads)
                    start.wait()
                    started = time.perf_counter()
                    self.run(batch)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    return started, time.perf_counter()

                spans = [p.result() for p in [pool.submit(one_pass) for _ in range(instances)]]
                wall_s = max(end for _, end in spans) - min(begin for begin, _ in spans)
                return Round(wall_s, time.process_time() - cpu_started)

            yield time_passes

    def warm_up(self, batches: int, batch_size: int) -> None:
        """Runs ``batches`` example batches (full size, then single items) so first requests are not slow."""
        example = Item(self.model.example())
        for _ in range(batches):
            self.run([example] * batch_size)
            self.run([example])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
