"""Batch jobs' items run on threads at the lowest CPU priority (SCHED_IDLE), a caller's never do.

The policy is read where the work runs (``os.sched_getscheduler(0)`` is the calling thread's on
Linux), not timed: what it buys is measured by ``benchmarks.bulk`` (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import pytest
import torch

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common import cpu_idle
from services.inference import background
from services.inference.batcher import DynamicBatcher
from services.inference.decoding import DecodeQueue
from services.inference.served import ServedModel
from services.inference.settings import InferenceSettings
from tests.inference.conftest import RunningInference, serve

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")

IDLE = getattr(os, "SCHED_IDLE", -1)
OTHER = getattr(os, "SCHED_OTHER", -1)
#: Where job threads' CPU group is: the machine's cpu.idle cgroup where one can be written (root,
#: cgroup v1's cpu controller: this machine and CI), else this process's own group.
WRITABLE = os.geteuid() == 0 and (cpu_idle.V1_ROOT / "cpu.idle").exists()
JOB_GROUP = f"/{cpu_idle.GROUP}" if WRITABLE else cpu_idle.current_group()
CALLER_GROUP = cpu_idle.current_group()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


def tasks() -> set[int]:
    """This process's thread ids."""
    return {int(tid) for tid in os.listdir("/proc/self/task")}


async def test_a_job_batchers_batches_run_idle_and_its_openmp_team_too(stack: AsyncExitStack) -> None:
    """torch's intra-op threads are an OpenMP team per thread that starts a parallel region:
    the job batcher's thread makes its team after it turned idle, and the team inherits it."""
    before = tasks()
    made: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        torch.set_num_threads(2)  # a team of two: this thread and one more
        matrix = torch.randn(256, 256)
        for _ in range(5):
            matrix = (matrix @ matrix).tanh()
        made.extend(tasks() - before)
        return [os.sched_getscheduler(0)] * len(items)

    jobs: DynamicBatcher[int, int] = DynamicBatcher("jobs", run, 8, initializer=background.lower_this_thread)
    callers: DynamicBatcher[int, int] = DynamicBatcher("callers", run, 8)
    await jobs.start(stack)
    await callers.start(stack)

    assert (await jobs.submit(1)).output == IDLE
    assert len(made) >= 2, made  # the batch thread and at least one OpenMP worker
    assert {tid: os.sched_getscheduler(tid) for tid in made} == dict.fromkeys(made, IDLE)
    # The team is the batch thread's children: they start in its cpu.idle cgroup too.
    assert {tid: cpu_idle.current_group(tid) for tid in made} == dict.fromkeys(made, JOB_GROUP)
    assert (await callers.submit(2)).output == OTHER
    assert os.sched_getscheduler(0) == OTHER  # nothing lowered the loop's own thread


async def test_a_job_decode_queue_decodes_idle(stack: AsyncExitStack) -> None:
    decoder = DecodeQueue(
        threads=1, initializer=background.idle_initializer(lambda: torch.set_num_threads(1))
    )
    await decoder.start(stack)

    seen = await decoder.run(
        lambda: (os.sched_getscheduler(0), torch.get_num_threads(), cpu_idle.current_group())
    )

    assert seen == (IDLE, 1, JOB_GROUP)


async def test_job_cpu_idle_off_keeps_sched_idle_only(stack: AsyncExitStack) -> None:
    decoder = DecodeQueue(threads=1, initializer=background.idle_initializer(group="off"))
    await decoder.start(stack)

    assert await decoder.run(lambda: (os.sched_getscheduler(0), cpu_idle.current_group())) == (
        IDLE,
        CALLER_GROUP,
    )


def test_job_items_run_idle_by_default() -> None:
    assert InferenceSettings().idle_job_items is True
    assert InferenceSettings().job_cpu_idle == "auto"


async def test_a_job_items_predict_decodes_and_runs_idle_and_a_callers_does_not(
    inference: RunningInference, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real service: ``PredictRequest.job_item`` is what puts the work on idle threads."""
    served = inference.service.models["efficientnet-lite0"]
    assert isinstance(served, ServedModel)
    model: Any = served.model
    seen: list[tuple[str, int, str]] = []
    preprocess, forward = model.preprocess, model.forward

    def watched_preprocess(item: Any) -> Any:
        seen.append(("decode", os.sched_getscheduler(0), cpu_idle.current_group()))
        return preprocess(item)

    def watched_forward(items: Any) -> Any:
        seen.append(("forward", os.sched_getscheduler(0), cpu_idle.current_group()))
        return forward(items)

    monkeypatch.setattr(model, "preprocess", watched_preprocess)
    monkeypatch.setattr(model, "forward", watched_forward)
    photo = types_pb2.Input(image=types_pb2.Image(content=cat_jpeg))

    for job_item in (True, False, True):
        request = inference_service_pb2.PredictRequest(
            model="efficientnet-lite0", inputs=[photo], top_k=1, job_item=job_item
        )
        await inference.stub.Predict(request, timeout=30)

    assert seen == [
        ("decode", IDLE, JOB_GROUP),
        ("forward", IDLE, JOB_GROUP),
        ("decode", OTHER, CALLER_GROUP),
        ("forward", OTHER, CALLER_GROUP),
        ("decode", IDLE, JOB_GROUP),
        ("forward", IDLE, JOB_GROUP),
    ]


async def test_a_callers_input_does_not_wait_behind_a_job_batch_that_runs(
    inference: RunningInference, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's batch at SCHED_IDLE gets the CPU only when nothing else wants it: a caller queued
    behind it would wait for that. Job items have a batcher of their own, so the caller does not."""
    served = inference.service.models["efficientnet-lite0"]
    assert isinstance(served, ServedModel)
    model: Any = served.model
    forward = model.forward
    job_running, release = threading.Event(), threading.Event()

    def gated_forward(items: Any) -> Any:
        if os.sched_getscheduler(0) == IDLE:  # the job's batch holds its thread until released
            job_running.set()
            release.wait(30)
        return forward(items)

    monkeypatch.setattr(model, "forward", gated_forward)
    photo = types_pb2.Input(image=types_pb2.Image(content=cat_jpeg))

    def predict(job_item: bool) -> Any:
        request = inference_service_pb2.PredictRequest(
            model="efficientnet-lite0", inputs=[photo], top_k=1, job_item=job_item
        )
        return inference.stub.Predict(request, timeout=30)

    job = asyncio.ensure_future(predict(job_item=True))
    try:
        assert await asyncio.to_thread(job_running.wait, 30)
        answer = await asyncio.wait_for(predict(job_item=False), 10)
        assert answer.results[0].classes
        assert not job.done()  # answered while the job's batch still ran
    finally:
        release.set()
    assert (await job).results[0].classes


async def test_job_threads_keep_to_job_cpus_and_a_callers_do_not(
    cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``job_cpus`` through a real service: a job item's decode and forward pass run on the named
    core only (FERRY_INFERENCE_JOB_CPUS), a caller's input anywhere."""
    allowed, last = set(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))
    settings = InferenceSettings(
        models=["efficientnet-lite0"], device="cpu", max_batch_size=2, warmup_batches=0, job_cpus="last"
    )
    async with serve(settings) as (service, channel):
        served = service.models["efficientnet-lite0"]
        assert isinstance(served, ServedModel)
        model: Any = served.model
        seen: list[tuple[str, set[int]]] = []
        preprocess, forward = model.preprocess, model.forward

        def watched_preprocess(item: Any) -> Any:
            seen.append(("decode", os.sched_getaffinity(0)))
            return preprocess(item)

        def watched_forward(items: Any) -> Any:
            seen.append(("forward", os.sched_getaffinity(0)))
            return forward(items)

        monkeypatch.setattr(model, "preprocess", watched_preprocess)
        monkeypatch.setattr(model, "forward", watched_forward)
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        photo = types_pb2.Input(image=types_pb2.Image(content=cat_jpeg))

        for job_item in (True, False):
            request = inference_service_pb2.PredictRequest(
                model="efficientnet-lite0", inputs=[photo], top_k=1, job_item=job_item
            )
            await stub.Predict(request, timeout=60)

    assert seen == [("decode", {last}), ("forward", {last}), ("decode", allowed), ("forward", allowed)]
