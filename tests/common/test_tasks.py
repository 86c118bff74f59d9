from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from services.common.tasks import spawn


async def test_stop_cancels_a_well_behaved_task() -> None:
    stack = AsyncExitStack()
    task = spawn(stack, asyncio.sleep(3600), "sleeper")
    await asyncio.sleep(0)
    await stack.aclose()
    assert task.cancelled()


async def test_stop_does_not_hang_on_a_task_that_swallows_its_cancel() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # what a library that loses a cancel looks like

    stack = AsyncExitStack()
    task = spawn(stack, stubborn(), "stubborn", stop_timeout_s=0.2)
    await asyncio.sleep(0)
    await asyncio.wait_for(stack.aclose(), timeout=5)  # returns instead of waiting forever
    assert not task.done()
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done()
