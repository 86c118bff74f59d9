"""A manifest's inline images being stored when a later line fails the check (services/jobs/manifests.py)."""

from __future__ import annotations

import asyncio
import gc
import warnings

from services.jobs.manifests import _Stores


def test_a_store_cancelled_before_it_ran_leaves_no_coroutine_unawaited() -> None:
    # A manifest whose line 1 is an inline image and line 2 a bad "id": the check stops at line 2
    # and cancels line 1's store, which had not run yet. It used to print "coroutine
    # 'Manifest._store' was never awaited" to the jobs service's log (a RuntimeWarning, no JSON).
    ran: list[str] = []

    async def store() -> None:
        ran.append("stored")

    async def check() -> None:
        stores = _Stores(2)
        await stores.start(store())
        stores.cancel()
        await asyncio.sleep(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(check())
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert ran == []


def test_stores_run_and_free_their_slots() -> None:
    async def check() -> list[int]:
        stores = _Stores(1)
        done: list[int] = []

        async def store(n: int) -> None:
            await asyncio.sleep(0)
            done.append(n)

        for n in range(3):
            await stores.start(store(n))  # one slot: waits for the one before
        await stores.wait()
        return done

    assert asyncio.run(check()) == [0, 1, 2]
