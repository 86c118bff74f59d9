"""The decode queue: image decoding and preprocessing, off the event loop, by priority.

Decoding is CPU work in a few threads shared by every model. Without a queue of its own, the
thread pool runs work in arrival order, so a job that sends 256 large inputs at once would make
every synchronous call wait behind all of them. Here the work waits in an ``AgingQueue`` (the
same priority rule as the models' batching queues) and ``threads`` workers take the best item
each time a thread is free. Work whose caller gave up, or whose deadline passed, is dropped
before it starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from services.common.errors import DeadlineExceeded, Unavailable
from services.common.tasks import spawn
from services.common.threads import named
from services.inference.scheduling import AgingQueue, Priority

T = TypeVar("T")


@dataclass
class _Work:
    call: Callable[[], Any]
    future: asyncio.Future[Any]
    deadline: float | None


class DecodeQueue:
    """Runs decode work on ``threads`` threads, best priority first.

    Args:
        threads: How many inputs decode at once.
        aging_s: The priority handicap step (see ``scheduling``).
        clock: Monotonic seconds; deadlines passed to ``run`` are on this clock.
        initializer: Run once in each decode thread as it starts.
    """

    def __init__(
        self,
        threads: int,
        aging_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        initializer: Callable[[], object] | None = None,
    ) -> None:
        self._threads = threads
        self._clock = clock
        self._queue: AgingQueue[_Work] = AgingQueue(aging_s, clock)
        self._ready = asyncio.Semaphore(0)
        self._executor = ThreadPoolExecutor(
            threads, thread_name_prefix="decode", initializer=named(initializer)
        )
        self._closed = False
        self._decoding = 0  # work items in a thread right now

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being decoded."""
        return not self._queue and not self._decoding

    async def start(self, stack: AsyncExitStack) -> None:
        """Starts the workers; closing ``stack`` stops them and fails the work still queued."""
        stack.callback(self._executor.shutdown, wait=False, cancel_futures=True)
        stack.callback(self._fail_queued)
        for index in range(self._threads):
            spawn(stack, self._work(), name=f"decode-{index}")

    async def run(
        self, call: Callable[[], T], priority: Priority = Priority.NORMAL, deadline: float | None = None
    ) -> T:
        """Runs ``call`` in a decode thread when its turn comes and returns its result.

        Raises:
            DeadlineExceeded: The deadline passed before a thread was free.
            Unavailable: The service is shutting down.
            Exception: Whatever ``call`` raised.
        """
        if self._closed:
            raise Unavailable("inference is shutting down; retry on another replica", "SHUTTING_DOWN")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.push(_Work(call, future, deadline), priority)
        self._ready.release()
        return cast(T, await future)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.acquire()  # one release per pushed item, so the queue is not empty
            work = self._queue.pop()
            if work.future.done():  # the caller gave up
                continue
            if work.deadline is not None and work.deadline <= self._clock():
                work.future.set_exception(
                    DeadlineExceeded(
                        "the call's deadline passed while its input waited to be decoded; it was "
                        "dropped: retry with a longer deadline",
                        "DEADLINE_PASSED_IN_QUEUE",
                    )
                )
                continue
            self._decoding += 1
            try:
                result = await loop.run_in_executor(self._executor, work.call)
            except asyncio.CancelledError:  # shutdown: answer the caller, then stop
                if not work.future.done():
                    work.future.set_exception(
                        Unavailable("inference stopped while decoding this input", "SHUTTING_DOWN")
                    )
                raise
            except Exception as err:
                if not work.future.done():
                    work.future.set_exception(err)
            else:
                if not work.future.done():
                    work.future.set_result(result)
            finally:
                self._decoding -= 1

    def _fail_queued(self) -> None:
        self._closed = True
        for work in self._queue.remove_if(lambda _: True):
            if not work.future.done():
                work.future.set_exception(
                    Unavailable("inference stopped before this input was decoded", "SHUTTING_DOWN")
                )
