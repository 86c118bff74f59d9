"""The real inference service for runner tests: ``python -m services.inference`` on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from devstack.health import wait_grpc_serving
from devstack.infra import ManagedProcess, free_port


@asynccontextmanager
async def real_inference_process(
    logs: Path, models: str = "", models_file: Path | None = None
) -> AsyncIterator[str]:
    """Runs inference on CPU with real weights (``models``, comma-separated, or its default ones,
    from ``models_file`` or the shipped models.toml) until the block ends; yields its gRPC target."""
    port = free_port()
    env = {
        "FERRY_INFERENCE_GRPC_PORT": str(port),
        "FERRY_INFERENCE_METRICS_PORT": "0",
        "FERRY_INFERENCE_DEVICE": "cpu",
        "FERRY_INFERENCE_WARMUP_BATCHES": "1",
        # Batch sizes 1 and 2 timed at start, not 1 to 16 (timing 1 to 16 chose 1 or 2 here; 11 s less
        # per start at load 8): these tests are about jobs, tests/inference/test_tuning about that.
        "FERRY_INFERENCE_BATCH_SIZE_SEARCH_MAX": "2",
    }
    if models:
        env["FERRY_INFERENCE_MODELS"] = models
    if models_file is not None:
        env["FERRY_INFERENCE_MODELS_FILE"] = str(models_file)
    process = ManagedProcess.start("inference", [".venv/bin/python", "-m", "services.inference"], logs, env)
    try:
        await asyncio.to_thread(wait_grpc_serving, f"127.0.0.1:{port}", process, 300)
        yield f"127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(process.stop)
