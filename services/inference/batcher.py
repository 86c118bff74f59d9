"""Dynamic batching: items from many concurrent requests share one forward pass.

One worker task per model. The collection rule is *continuous batching*:

* when the model is idle (nothing ran since the queue was last empty), the first item to arrive
  runs at once, alone: no waiting for company that may never come;
* while a batch runs, new items queue up; when it finishes, the next batch takes up to
  ``max_batch_size`` of them at once. Under load batches fill by themselves, and the batch size
  follows the load. ``max_delay_s`` (default 0) optionally waits a little longer for a busy
  model's next batch to fill, which pays off where a fuller batch costs almost nothing (GPUs).

The queue is ordered by priority with aging (see ``scheduling``) and bounded: beyond
``max_queue`` waiting items a submit fails at once with RESOURCE_EXHAUSTED. Items whose caller
gave up (cancelled) or whose deadline passed are dropped before compute and free their place.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf import duration_pb2

from services.common.errors import DeadlineExceeded, FerryError, ResourceExhausted, Unavailable
from services.common.tasks import spawn
from services.common.threads import named
from services.inference import metrics
from services.inference.models.contract import InvalidInput
from services.inference.scheduling import AgingQueue, Priority

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

QUEUE_FULL = "QUEUE_FULL"
DEADLINE_PASSED = "DEADLINE_PASSED_IN_QUEUE"


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
    prepare_ms: float = 0.0
    """Time the item's ``prepare`` took in the batch's thread (``submit_prepared``), else 0."""


@dataclass
class _Pending(Generic[In, Out]):
    item: In | None
    future: asyncio.Future[Batched[Out]]
    enqueued: float
    deadline: float | None
    prepare: Callable[[], In] | None = None
    """Makes ``item`` in the batch's thread, just before the run (``submit_prepared``)."""
    prepared_s: float = 0.0
    failure: BaseException | None = None
    """What ``prepare`` raised: this item fails alone, the rest of its batch still runs."""


def deadline_passed(name: str, where: str) -> DeadlineExceeded:
    """The error of an item dropped because its caller's deadline passed while it waited."""
    return DeadlineExceeded(
        f"the call's deadline passed while its input waited {where} for model {name!r}; "
        "it was dropped before running: retry with a longer deadline",
        DEADLINE_PASSED,
        {"model": name},
    )


class DynamicBatcher(Generic[In, Out]):
    """Queues items by priority and runs them in batches through ``run``.

    Args:
        name: Model name, used in metrics, messages and the worker's task name.
        run: Runs one batch synchronously and returns one output per item, in order.
        max_batch_size: Largest batch handed to ``run``.
        max_delay_s: How long a busy model waits for its next batch to fill (0: not at all).
            An idle model never waits.
        max_queue: Most items waiting (not yet running) before submits are refused.
        aging_s: The priority handicap step (see ``scheduling``).
        clock: Monotonic seconds; deadlines passed to ``submit`` are on this clock.
        instances: Batches that may run at once, each in its own thread (a model's ``instances``).
        share_threads: Called in a batch's thread just before ``run``, with how many batches run
            at that moment (this one included): the model splits its intra-op threads by it.
        initializer: Run once in each batch thread as it starts (``background.lower_this_thread``
            for a batch jobs' batcher).
    """

    def __init__(
        self,
        name: str,
        run: Callable[[Sequence[In]], Sequence[Out]],
        max_batch_size: int,
        max_delay_s: float = 0.0,
        max_queue: int = 256,
        aging_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        instances: int = 1,
        share_threads: Callable[[int], None] | None = None,
        initializer: Callable[[], object] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or instances < 1:
            raise ValueError("max_batch_size, max_queue and instances must be at least 1")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._run = run
        self._max_delay_s = max_delay_s
        self._clock = clock
        self._queue: AgingQueue[_Pending[In, Out]] = AgingQueue(aging_s, clock)
        self._arrived = asyncio.Event()
        # One thread per instance (default one). With one, forward passes run one at a time with
        # all of torch's intra-op threads; with more, those running share them (``share_threads``).
        self._instances = instances
        self._share_threads = share_threads
        self._executor = ThreadPoolExecutor(instances, f"batch-{name}", initializer=named(initializer))
        self._closed = False
        self._running: dict[int, list[_Pending[In, Out]]] = {}
        self._last_batch_s = 0.0

    async def start(self, stack: AsyncExitStack) -> None:
        """Starts the worker; closing ``stack`` stops it and fails whatever is still queued."""
        # wait=False: a forward pass still running finishes in its thread without blocking the loop.
        stack.callback(self._executor.shutdown, wait=False, cancel_futures=True)
        stack.callback(self._fail_queued)
        for worker in range(self._instances):
            spawn(stack, self._work(worker), name=f"batcher-{self.name}-{worker}")

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch running: an item submitted now runs at once, alone."""
        return not self._queue and not self._running

    @property
    def queued(self) -> int:
        """Items waiting to run whose callers still wait for them."""
        self._drop_dead()
        return len(self._queue)

    def check_room(self, count: int, elsewhere: int = 0) -> None:
        """Refuses ``count`` more items when the queue, plus ``elsewhere`` items bound for it, is full.

        A request larger than the whole bound is still admitted into an empty queue, so that no
        request is refused forever.

        Raises:
            ResourceExhausted: With reason QUEUE_FULL and retry advice.
        """
        waiting = len(self._queue) + elsewhere
        if waiting + count <= self.max_queue:
            return
        waiting = self.queued + elsewhere
        if waiting + count <= self.max_queue or waiting == 0:
            return
        metrics.REJECTED.labels(self.name).inc(count)
        raise ResourceExhausted(
            f"model {self.name!r} has {waiting} inputs waiting, its limit is {self.max_queue} "
            f"(FERRY_INFERENCE_MAX_QUEUE); retry after the advised delay",
            QUEUE_FULL,
            {"model": self.name, "waiting": str(waiting), "max_queue": str(self.max_queue)},
            retry_after=self._retry_after(waiting),
        )

    async def submit(
        self,
        item: In,
        priority: Priority = Priority.NORMAL,
        deadline: float | None = None,
        admitted: bool = False,
    ) -> Batched[Out]:
        """Queues ``item`` and waits for its output.

        Args:
            item: The input to run.
            priority: Its priority in this model's queue.
            deadline: When its caller stops waiting (on the batcher's clock); the item is
                dropped instead of run once it has passed.
            admitted: The caller already passed ``check_room`` for this item.

        Raises:
            Unavailable: When the batcher is shutting down.
            ResourceExhausted: When the queue is full (unless ``admitted``).
            DeadlineExceeded: When the deadline passed before the item ran.
        """
        if not admitted:
            self.check_room(1)
        return await self._queued(item, None, priority, deadline)

    async def submit_prepared(
        self, prepare: Callable[[], In], priority: Priority = Priority.NORMAL, deadline: float | None = None
    ) -> Batched[Out]:
        """As ``submit`` for an admitted item that ``prepare`` makes in the batch's thread.

        For an idle model (``idle``): a lone request's preprocessing and forward pass then take
        one thread hand-off instead of two (a decode thread's, then the batch's). What
        ``prepare`` raises fails this item only; its time is ``Batched.prepare_ms``.

        Raises:
            As ``submit``; and whatever ``prepare`` raised.
        """
        return await self._queued(None, prepare, priority, deadline)

    async def _queued(
        self, item: In | None, prepare: Callable[[], In] | None, priority: Priority, deadline: float | None
    ) -> Batched[Out]:
        if self._closed:
            raise Unavailable(
                f"model {self.name!r} is shutting down; retry on another replica", "SHUTTING_DOWN"
            )
        now = self._clock()
        if deadline is not None and deadline <= now:
            raise deadline_passed(self.name, "before reaching the queue")
        future: asyncio.Future[Batched[Out]] = asyncio.get_running_loop().create_future()
        self._queue.push(_Pending(item, future, now, deadline, prepare), priority)
        self._arrived.set()
        return await future

    async def _work(self, worker: int) -> None:
        busy = False
        while True:
            if not self._queue:
                busy = False
                self._arrived.clear()
                await self._arrived.wait()
            elif busy and self._max_delay_s > 0:
                await self._wait_to_fill()
            batch = self._take()
            if batch:
                busy = True
                await self._run_batch(worker, batch)

    async def _wait_to_fill(self) -> None:
        """Waits until a full batch is queued or ``max_delay_s`` has passed."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self._max_delay_s
        while len(self._queue) < self.max_batch_size:
            remaining = until - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending[In, Out]]:
        """Pops the next batch: up to ``max_batch_size`` live items, best key first."""
        batch: list[_Pending[In, Out]] = []
        now = self._clock()
        while self._queue and len(batch) < self.max_batch_size:
            pending = self._queue.pop()
            if not self._expire(pending, now):
                batch.append(pending)
        return batch

    def _expire(self, pending: _Pending[In, Out], now: float) -> bool:
        """Answers a dead item (caller gone or deadline passed); true when it must not run."""
        if pending.future.done():  # cancelled: the caller gave up
            return True
        if pending.deadline is not None and pending.deadline <= now:
            metrics.EXPIRED.labels(self.name).inc()
            pending.future.set_exception(deadline_passed(self.name, "in the queue"))
            return True
        return False

    def _drop_dead(self) -> None:
        now = self._clock()
        self._queue.remove_if(lambda pending: self._expire(pending, now))

    async def _run_batch(self, worker: int, batch: list[_Pending[In, Out]]) -> None:
        loop = asyncio.get_running_loop()
        started = self._clock()
        self._running[worker] = batch
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_sharing, len(self._running), batch)
            prepared_s = sum(p.prepared_s for p in batch)
            for p in batch:  # a prepare that raised fails that item alone
                if p.failure is not None and not p.future.done():
                    p.future.set_exception(p.failure)
            batch = [p for p in batch if p.failure is None]
            if len(outputs) != len(batch):
                raise RuntimeError(
                    f"model {self.name!r} returned {len(outputs)} outputs for a batch of {len(batch)}"
                )
        except Exception as err:  # a failed batch fails its items, never the worker
            self._running.pop(worker, None)
            if isinstance(err, FerryError) and err.is_callers:  # the input's fault, not the model's
                log.info(
                    "batch of %d for %s refused: %s [%s]", len(batch), self.name, err.message, err.reason
                )
            elif isinstance(err, InvalidInput):  # the model refused an input (a notebook's predict)
                log.info("batch of %d for %s refused: %s [%s]", len(batch), self.name, err, err.reason)
            else:
                log.exception("batch of %d for %s failed", len(batch), self.name)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        # Not in a `finally`: when shutdown cancels this task mid-batch, _running must still
        # hold the batch so that _fail_queued answers its callers instead of leaving them hanging.
        self._running.pop(worker, None)
        self._resolve(batch, outputs, started, self._clock(), prepared_s)

    def _run_sharing(self, running: int, batch: Sequence[_Pending[In, Out]]) -> Sequence[Out]:
        """``run`` in the batch's thread, after the model took its share of threads and the
        items with a ``prepare`` were made (one that raised is left out, its ``failure`` set)."""
        if self._share_threads is not None:
            self._share_threads(running)
        items: list[In] = []
        for p in batch:
            if p.prepare is not None:
                started = time.perf_counter()
                try:
                    p.item = p.prepare()
                except Exception as err:
                    p.failure = err
                    continue
                finally:
                    p.prepared_s = time.perf_counter() - started
            items.append(p.item)  # type: ignore[arg-type]  # set by now
        return self._run(items) if items else []

    def _resolve(
        self,
        batch: list[_Pending[In, Out]],
        outputs: Sequence[Out],
        started: float,
        finished: float,
        prepared_s: float = 0.0,
    ) -> None:
        size = len(batch)
        self._last_batch_s = finished - started
        # The items' prepare ran in the same thread before the forward pass: not the model's time.
        inference_ms = (finished - started - prepared_s) * 1000
        metrics.BATCH_SIZE.labels(self.name).observe(size)
        for p, output in zip(batch, outputs, strict=True):
            queue_s = started - p.enqueued
            metrics.QUEUE_WAIT.labels(self.name).observe(queue_s)
            if not p.future.done():
                p.future.set_result(Batched(output, size, queue_s * 1000, inference_ms, p.prepared_s * 1000))

    def _retry_after(self, waiting: int) -> duration_pb2.Duration:
        """About how long the queue takes to drain: batches ahead times the last batch's time."""
        seconds = math.ceil(waiting / self.max_batch_size) * self._last_batch_s
        seconds = min(max(seconds, 0.1), 30.0)
        return duration_pb2.Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))

    def _fail_queued(self) -> None:
        """Fails every item not yet answered: queued ones and those of a batch cut off by shutdown."""
        self._closed = True
        left = [p for batch in self._running.values() for p in batch] + list(self._queue)
        self._queue.remove_if(lambda _: True)
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(
                    Unavailable(f"model {self.name!r} stopped before this item ran", "SHUTTING_DOWN")
                )
