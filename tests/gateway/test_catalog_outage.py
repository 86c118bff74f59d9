"""After inference crashes, the gateway's model list says so at once, not READY from its cache.

The real inference service (efficientnet-lite0, real weights) is killed with SIGKILL, as a crash
would, and started again on the same port; the catalog is the one the gateway builds
(``followed_catalog``), over a real channel.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from devstack.health import wait_grpc_serving
from devstack.infra import ManagedProcess, free_port
from ferry.models.v1 import model_pb2
from services.common.channels import open_channel
from services.common.downstream import Backend
from services.gateway.catalog import ModelCatalog, followed_catalog

READY = model_pb2.MODEL_STATE_READY
UNAVAILABLE = model_pb2.MODEL_STATE_UNAVAILABLE


def _start_inference(port: int, logs: Path, aged_every_s: float = 0.0) -> ManagedProcess:
    env = {
        "FERRY_INFERENCE_GRPC_PORT": str(port),
        "FERRY_INFERENCE_METRICS_PORT": "0",
        "FERRY_INFERENCE_DEVICE": "cpu",
        "FERRY_INFERENCE_WARMUP_BATCHES": "1",
        "FERRY_INFERENCE_MODELS": "efficientnet-lite0",
        # Sizes 1 and 2 timed at each of its two starts, not 1 to 16 (tests/inference/test_tuning's).
        "FERRY_INFERENCE_BATCH_SIZE_SEARCH_MAX": "2",
        # A health stream cut by an aged connection is no outage (0: connections are never aged).
        "FERRY_INFERENCE_MAX_CONNECTION_AGE_S": str(aged_every_s),
        "FERRY_INFERENCE_MAX_CONNECTION_AGE_GRACE_S": "0.5",
        # A stop drains open calls for up to this long: the catalog's stream must not be one of them.
        "FERRY_INFERENCE_SHUTDOWN_GRACE_S": "120",
    }
    process = ManagedProcess.start("inference", [".venv/bin/python", "-m", "services.inference"], logs, env)
    wait_grpc_serving(f"127.0.0.1:{port}", process, 300)
    return process


async def _until(
    catalog: ModelCatalog, holds: Callable[[model_pb2.Model], bool], timeout_s: float
) -> tuple[model_pb2.Model, float]:
    """Lists models until efficientnet-lite0 satisfies ``holds``; returns it and how long it took."""
    started = time.monotonic()
    while True:
        (model,) = [m for m in await catalog.served() if m.name == "models/efficientnet-lite0"]
        if holds(model):
            return model, time.monotonic() - started
        assert time.monotonic() - started < timeout_s, f"still {model.state} after {timeout_s}s: {model}"
        await asyncio.sleep(0.05)


async def test_a_crashed_inference_is_listed_unavailable_at_once_and_ready_once_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    process = await asyncio.to_thread(_start_inference, port, tmp_path / "first", 1.0)
    async with AsyncExitStack() as stack:
        channel = open_channel(f"127.0.0.1:{port}", 1024 * 1024)
        stack.push_async_callback(channel.close)
        # The gateway's defaults: a 2 s list, answered up to 30 s stale while it refreshes.
        catalog = followed_catalog(
            stack, channel, Backend("inference", channel, 30.0, own_unavailable=True), 2.0
        )
        model, _ = await _until(catalog, lambda m: m.state == READY, 30)
        assert model.ready
        # Inference cuts the health stream with every aged connection (1.5 s here): still READY.
        seen = set()
        for _ in range(80):
            seen |= {m.state for m in await catalog.served() if m.name == "models/efficientnet-lite0"}
            await asyncio.sleep(0.05)
        assert seen == {READY}, seen

        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.popen.wait)
        model, took = await _until(catalog, lambda m: m.state != READY, 5)
        print(f"\nlisted {model_pb2.ModelState.Name(model.state)} {took:.2f}s after the crash")
        assert model.state == UNAVAILABLE and not model.ready, model
        assert model.state_message.startswith("inference is not answering (UNAVAILABLE"), model
        assert all(v.state == UNAVAILABLE for v in model.versions), model
        # It stays so while inference is down, whatever the list's age.
        await asyncio.sleep(2.5)
        (model,) = [m for m in await catalog.served() if m.name == "models/efficientnet-lite0"]
        assert model.state == UNAVAILABLE and not model.ready, model

        restarted = await asyncio.to_thread(_start_inference, port, tmp_path / "second")
        try:
            model, took = await _until(catalog, lambda m: m.state == READY, 30)
            print(f"listed READY {took:.2f}s after the new inference served")
            assert model.ready and not model.state_message, model
        finally:
            # SIGTERM: inference drains its calls for up to its 120 s grace. The catalog lets its
            # health stream go when inference says NOT_SERVING, so the drain has nothing to wait for
            # and the process exits cleanly long before (stop() kills it after 60 s: code -9).
            code = await asyncio.to_thread(restarted.stop, 60.0)
        assert code == 0, f"inference exited {code}: a health stream held its graceful stop"
        model, _ = await _until(catalog, lambda m: m.state != READY, 5)
        assert model.state == UNAVAILABLE and not model.ready, model
