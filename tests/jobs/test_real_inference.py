"""The success path against the real inference service and the real efficientnet-lite0 weights."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from opentelemetry import trace
from PIL import Image
from skimage import data as skimage_data

from ferry.predictions.v1 import prediction_pb2
from services.common.ids import item_record_id
from tests.e2e.expectations import CAT_CLASSES, ESPRESSO
from tests.jobs.conftest import Harness
from tests.jobs.inference_process import real_inference_process


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
async def real_inference(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """``python -m services.inference`` on a free port, CPU, real weights; yields its target."""
    async with real_inference_process(tmp_path_factory.mktemp("inference-logs")) as target:
        yield target


async def test_job_items_run_on_the_real_model(harness: Harness, real_inference: str) -> None:
    harness.configure(inference_target=real_inference, inference_timeout_s=60.0, ack_wait_s=120.0)
    job = uuid.uuid4()
    inputs = [jpeg(skimage_data.chelsea()), jpeg(skimage_data.coffee()), b"this is not an image"]
    with trace.get_tracer("test").start_as_current_span("test.create_job") as span:
        for i, content in enumerate(inputs):
            await harness.publish_item(job, i, content, top_k=3)
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = sorted(await harness.records(job), key=lambda r: r.item_index)
    assert [r.name for r in records] == [f"predictions/{item_record_id(job, i)}" for i in range(3)]
    cat, coffee, broken = records
    assert cat.state == coffee.state == prediction_pb2.PREDICTION_STATE_SUCCEEDED
    assert cat.classes[0].index in CAT_CLASSES
    assert coffee.classes[0].index == ESPRESSO
    assert len(cat.classes) == 3
    assert cat.timing.batch_size >= 1
    assert broken.state == prediction_pb2.PREDICTION_STATE_FAILED
    assert broken.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert {r.trace_id for r in records} == {format(span.get_span_context().trace_id, "032x")}
