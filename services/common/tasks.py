"""Background tasks tied to a service's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

log = logging.getLogger(__name__)


def spawn(
    stack: AsyncExitStack, coro: Coroutine[Any, Any, None], name: str, stop_timeout_s: float = 10.0
) -> asyncio.Task[None]:
    """Starts ``coro`` as a task that is cancelled and awaited when ``stack`` closes.

    A task that dies with an error is logged at once rather than failing silently.
    """
    task = asyncio.create_task(coro, name=name)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("background task %s died", name, exc_info=done.exception())

    task.add_done_callback(report)

    async def stop() -> None:
        task.cancel()
        # Bounded: a task that swallows its cancel (some libraries' timeouts do) must not hang
        # the whole shutdown; it is reported and left behind.
        done, _ = await asyncio.wait({task}, timeout=stop_timeout_s)
        if not done:
            log.error(
                "background task %s ignored cancellation for %.0fs; shutting down without it",
                name,
                stop_timeout_s,
            )
            return
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    stack.push_async_callback(stop)
    return task


async def first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Returns when the first of ``waits`` ends; the others are cancelled (and awaited)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
