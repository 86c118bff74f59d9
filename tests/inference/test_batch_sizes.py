"""Measured batch sizes kept in NATS KV: a restart on the same kind of device skips the timing."""

from __future__ import annotations

import contextlib
import json
from contextlib import AsyncExitStack

import nats
import pytest
import torch
from grpc_health.v1 import health
from nats.js.errors import BucketNotFoundError

from services.common.readiness import Readiness
from services.inference.batch_sizes import BUCKET, measurement_key
from services.inference.models.config import ModelConfig
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings

CPU = torch.device("cpu")


def test_the_key_changes_with_whatever_the_measurement_depends_on() -> None:
    config = ModelConfig(name="efficientnet-lite0", version="1", instances=2)
    key = measurement_key(config, CPU, 16, 0.25)
    assert key == measurement_key(config, CPU, 16, 0.25)
    assert key.startswith("efficientnet-lite0.1.")
    others = {
        measurement_key(config.model_copy(update={"version": "2"}), CPU, 16, 0.25),
        measurement_key(config.model_copy(update={"options": {"resize": 224}}), CPU, 16, 0.25),
        measurement_key(config.model_copy(update={"instances": 1}), CPU, 16, 0.25),
        measurement_key(config.model_copy(update={"graph": "eager"}), CPU, 16, 0.25),
        measurement_key(config, CPU, 8, 0.25),
        measurement_key(config, CPU, 16, 0.1),
    }
    assert key not in others and len(others) == 6
    # NATS KV keys take [-/_=.a-zA-Z0-9] only.
    odd = measurement_key(config.model_copy(update={"name": "my model+x", "version": "v 2"}), CPU, 16, 0.25)
    assert odd.startswith("my_model_x.v_2.") and all(c.isalnum() or c in "-_=." for c in odd)


async def _start_and_read(settings: InferenceSettings) -> int:
    """Starts inference as its process does, and returns efficientnet-lite0's batch size."""
    service = InferenceService(settings)
    async with AsyncExitStack() as stack:
        await service.start(stack, Readiness("inference", health.aio.HealthServicer()))
        return service.models["efficientnet-lite0"].describe().max_batch_size


@pytest.mark.parametrize("keep", [True, False])
async def test_a_restart_uses_the_kept_batch_size_instead_of_timing_again(nats_url: str, keep: bool) -> None:
    settings = InferenceSettings(
        nats_url=nats_url,
        models=["efficientnet-lite0"],
        batch_size_search_max=2,  # times sizes 1 and 2 only: quick
        warmup_batches=0,
        metrics_port=0,
        keep_batch_sizes=keep,
    )
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_key_value(BUCKET)
        measured = await _start_and_read(settings)
        assert measured in (1, 2)
        if not keep:
            with pytest.raises(BucketNotFoundError):  # nothing kept: not even the bucket
                await js.key_value(BUCKET)
            return
        kv = await js.key_value(BUCKET)
        [key] = await kv.keys()
        assert json.loads((await kv.get(key)).value or b"") == {"batch_size": measured}
        # A size timing would never choose (it tries 1 and 2): the next start can only have read it.
        await kv.put(key, json.dumps({"batch_size": 3}).encode())
        assert await _start_and_read(settings) == 3
        # An unreadable value is measured again, and replaced.
        await kv.put(key, b"not json")
        assert await _start_and_read(settings) in (1, 2)
        assert json.loads((await kv.get(key)).value or b"")["batch_size"] in (1, 2)
    finally:
        await client.close()
