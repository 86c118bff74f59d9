"""Dynamic batching: items from many concurrent requests share one forward pass.

One worker task per model takes the first queued item, then keeps collecting until the batch
holds ``max_batch_size`` items or ``max_delay_s`` has passed since that first item arrived.
The batch runs in a dedicated thread (so the event loop keeps serving) and each item's future
is resolved with its own output. While a batch runs, new items queue up and form the next one,
so under load batches fill without waiting for the delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.common.errors import Unavailable
from services.common.tasks import spawn
from services.inference import metrics

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Batched(Generic[Out]):
    """One item's output and where its time went."""

    output: Out
    batch_size: int
    """How many items ran in the same forward pass."""
    queue_ms: float
    """Time from submit until its batch started running."""
    inference_ms: float
    """Time the batch's run function took."""


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Batched[Out]]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[In, Out]):
    """Queues items and runs them in batches through ``run``.

    Args:
        name: Model name, used in metrics and the worker's task name.
        run: Runs one batch synchronously and returns one output per item, in order.
        max_batch_size: Largest batch handed to ``run``.
        max_delay_s: Longest wait after a batch's first item for more items.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[Sequence[In]], Sequence[Out]],
        max_batch_size: int,
        max_delay_s: float,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.name = name
        self.max_batch_size = max_batch_size
        self._run = run
        self._max_delay_s = max_delay_s
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
        # One thread: forward passes run one at a time, each using torch's own intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._closed = False
        self._running: list[_Pending[In, Out]] = []

    async def start(self, stack: AsyncExitStack) -> None:
        """Starts the worker; closing ``stack`` stops it and fails whatever is still queued."""
        # wait=False: a forward pass still running finishes in its thread without blocking the loop.
        stack.callback(self._executor.shutdown, wait=False, cancel_futures=True)
        stack.callback(self._fail_queued)
        spawn(stack, self._work(), name=f"batcher-{self.name}")

    async def submit(self, item: In) -> Batched[Out]:
        """Queues ``item`` and waits for its output.

        Raises:
            Unavailable: When the batcher is shutting down.
        """
        if self._closed:
            raise Unavailable(
                f"model {self.name!r} is shutting down; retry on another replica", "SHUTTING_DOWN"
            )
        pending: _Pending[In, Out] = _Pending(item, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            # Callers that gave up (deadline, cancellation) take no place in the forward pass.
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            started = time.perf_counter()
            self._running = batch
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, [p.item for p in batch])
            except Exception as err:  # a failed batch fails its items, never the worker
                self._running = []
                log.exception("batch of %d for %s failed", len(batch), self.name)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            # Not in a `finally`: when shutdown cancels this task mid-batch, _running must still
            # hold the batch so that _fail_queued answers its callers instead of leaving them hanging.
            self._running = []
            self._resolve(batch, outputs, started, time.perf_counter())

    async def _collect(self) -> list[_Pending[In, Out]]:
        first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued + self._max_delay_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _resolve(
        self, batch: list[_Pending[In, Out]], outputs: Sequence[Out], started: float, finished: float
    ) -> None:
        size = len(batch)
        inference_ms = (finished - started) * 1000
        metrics.BATCH_SIZE.labels(self.name).observe(size)
        for p, output in zip(batch, outputs, strict=True):
            queue_s = started - p.enqueued
            metrics.QUEUE_WAIT.labels(self.name).observe(queue_s)
            if not p.future.done():
                p.future.set_result(Batched(output, size, queue_s * 1000, inference_ms))

    def _fail_queued(self) -> None:
        """Fails every item not yet answered: queued ones and those of a batch cut off by shutdown."""
        self._closed = True
        left = list(self._running)
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(
                    Unavailable(f"model {self.name!r} stopped before this item ran", "SHUTTING_DOWN")
                )
