"""The dynamic batcher forms real batches under concurrency and keeps each item's answer its own."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.inference.batcher import Batched, DynamicBatcher
from services.inference.models.contract import IMAGE, Answer, InvalidInput, Item, ModelInput, Options
from services.inference.runner import ModelRunner
from tests.inference.conftest import CAT_CLASSES, ESPRESSO, RunningInference


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def test_concurrent_items_share_forward_passes_on_the_real_model(
    inference: RunningInference, stack: AsyncExitStack, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    served = inference.service.models["efficientnet-lite0"]
    runner: ModelRunner = served.runner
    # All items are queued in one loop tick, before the worker wakes, so batches must form.
    batcher: DynamicBatcher[Item, Answer] = DynamicBatcher("test-lite0", runner.run, 8)
    await batcher.start(stack)
    cat = Item(served.model.preprocess(ModelInput(IMAGE, image=cat_jpeg)), Options(top_k=3))
    coffee = Item(served.model.preprocess(ModelInput(IMAGE, image=coffee_jpeg)), Options(top_k=1))
    items = [cat, coffee] * 6

    results = await asyncio.gather(*(batcher.submit(item) for item in items))

    sizes = [r.batch_size for r in results]
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8 and sorted(set(sizes)) == [4, 8], sizes  # 12 items: one full batch, then 4
    for item, result in zip(items, results, strict=True):
        # Each answer belongs to its own input, whatever batch it ran in.
        indices = [c.index for c in result.output.classes]
        assert len(indices) == item.options.top_k
        if item is cat:
            assert indices[0] in CAT_CLASSES
        else:
            assert indices == [ESPRESSO]
        assert result.queue_ms >= 0 and result.inference_ms > 0


async def test_batches_never_exceed_max_size(stack: AsyncExitStack) -> None:
    seen: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        seen.append(len(items))
        return [item * 10 for item in items]

    batcher: DynamicBatcher[int, int] = DynamicBatcher("sizes", run, max_batch_size=3)
    await batcher.start(stack)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert [r.output for r in results] == [i * 10 for i in range(10)]
    assert max(seen) == 3 and sum(seen) == 10


async def test_a_failing_batch_fails_its_items_and_the_worker_goes_on(stack: AsyncExitStack) -> None:
    def run(items: Sequence[int]) -> list[int]:
        if any(item < 0 for item in items):
            raise RuntimeError("negative input")
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher("failing", run, max_batch_size=4)
    await batcher.start(stack)
    with pytest.raises(RuntimeError, match="negative input"):
        await batcher.submit(-1)
    assert (await batcher.submit(7)).output == 7


async def test_items_queued_at_shutdown_fail_unavailable() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def run(items: Sequence[int]) -> list[int]:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
        return list(items)

    stack = AsyncExitStack()
    batcher: DynamicBatcher[int, int] = DynamicBatcher("closing", run, max_batch_size=1, max_delay_s=0)
    await batcher.start(stack)
    running = asyncio.ensure_future(batcher.submit(1))
    await started.wait()
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(stack.aclose())
    await asyncio.sleep(0.05)
    release.set()
    await closing
    for future in (running, queued):
        with pytest.raises(Unavailable):
            await future
    with pytest.raises(Unavailable):
        await batcher.submit(3)


async def test_instances_run_batches_side_by_side(stack: AsyncExitStack) -> None:
    import threading

    both_running = threading.Barrier(2, timeout=10)

    def run(items: Sequence[int]) -> list[int]:
        both_running.wait()  # returns only when two batches run at once, in two threads
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher("twins", run, max_batch_size=1, instances=2)
    await batcher.start(stack)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2))
    assert [r.output for r in results] == [1, 2]


async def test_each_batch_learns_how_many_batches_run_beside_it(stack: AsyncExitStack) -> None:
    import threading

    both_running = threading.Barrier(2, timeout=10)
    shares: list[tuple[str, int]] = []

    def share(running: int) -> None:
        shares.append((threading.current_thread().name, running))

    def run(items: Sequence[int]) -> list[int]:
        if items[0] > 0:
            both_running.wait()
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        "twins", run, max_batch_size=1, instances=2, share_threads=share
    )
    await batcher.start(stack)
    await batcher.submit(0)  # alone: the whole machine
    assert [running for _, running in shares] == [1]
    await asyncio.gather(batcher.submit(1), batcher.submit(2))
    # The first of the two started alone, the second beside it; each is told in its own batch
    # thread, where torch's thread count applies.
    assert sorted(running for _, running in shares[1:]) == [1, 2]
    assert all(name.startswith("batch-twins") for name, _ in shares)


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (
            InvalidArgument("input 0 is not a decodable image", reason="INVALID_IMAGE"),
            "refused: input 0 is not a decodable image [INVALID_IMAGE]",
        ),
        # A notebook model's predict refusing a payload raises InvalidInput from forward (the
        # caller's fault, INVALID_ARGUMENT); it used to be logged as ERROR with a traceback.
        (
            InvalidInput("the notebook's predict refused the payload: ValueError('needs \"image\"')"),
            "refused: the notebook's predict refused the payload",
        ),
    ],
)
async def test_an_input_refused_by_the_batch_is_an_info_line_without_traceback(
    stack: AsyncExitStack, caplog: pytest.LogCaptureFixture, error: Exception, logged: str
) -> None:
    def run(items: Sequence[int]) -> list[int]:
        raise error

    batcher: DynamicBatcher[int, int] = DynamicBatcher("refusing", run, max_batch_size=4)
    await batcher.start(stack)
    with caplog.at_level(logging.INFO, logger="services.inference.batcher"), pytest.raises(type(error)):
        await batcher.submit(1)
    [record] = [r for r in caplog.records if r.name == "services.inference.batcher"]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert logged in record.getMessage()


async def test_a_prepared_item_is_made_in_the_batch_thread_and_fails_alone(stack: AsyncExitStack) -> None:
    threads: dict[str, str] = {}

    def run(items: Sequence[int]) -> list[int]:
        threads["run"] = threading.current_thread().name
        return [item * 10 for item in items]

    def prepare() -> int:
        threads["prepare"] = threading.current_thread().name
        return 1

    def broken() -> int:
        raise ValueError("not an image")

    batcher: DynamicBatcher[int, int] = DynamicBatcher("prepared", run, max_batch_size=3)
    await batcher.start(stack)
    assert batcher.idle
    # Queued in one loop tick: one batch of three, one of whose items cannot be made.
    made, failed, plain = await asyncio.gather(
        batcher.submit_prepared(prepare),
        batcher.submit_prepared(broken),
        batcher.submit(2),
        return_exceptions=True,
    )
    assert isinstance(made, Batched) and isinstance(plain, Batched)
    assert (made.output, plain.output) == (10, 20)
    assert made.batch_size == plain.batch_size == 2  # the item that failed did not run
    assert made.prepare_ms > 0 and plain.prepare_ms == 0
    assert isinstance(failed, ValueError)
    # Made in the thread the batch ran in: one hand-off, not a decode thread's and then the batch's.
    assert threads["prepare"] == threads["run"] and threads["run"].startswith("batch-prepared")
    assert batcher.idle
