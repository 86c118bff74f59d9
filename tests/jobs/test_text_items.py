"""Job items of texts on the real minilm model: embeddings and zero-shot classes reach the records."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from tests.jobs.conftest import Harness
from tests.jobs.inference_process import real_inference_process

CAT = "a cat sleeping on a sofa"
KITTEN = "a kitten napping on a couch"
TAX = "quarterly tax filing deadline"


@pytest.fixture(scope="module")
async def minilm_inference(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Inference serving only minilm (it loads in seconds); yields its target."""
    async with real_inference_process(tmp_path_factory.mktemp("minilm-logs"), models="minilm") as target:
        yield target


def text(content: str, *labels: str) -> types_pb2.Input:
    return types_pb2.Input(text=types_pb2.Text(content=content, candidate_labels=labels))


async def test_text_items_record_embeddings_and_zero_shot_classes(
    harness: Harness, minilm_inference: str
) -> None:
    harness.configure(inference_target=minilm_inference, inference_timeout_s=60.0, ack_wait_s=120.0)
    job = uuid.uuid4()
    inputs = [
        text(CAT),
        text(KITTEN),
        text(TAX),
        text(CAT, "quarterly tax filing", "animal", "weather"),
        types_pb2.Input(image=types_pb2.Image(content=b"\xff\xd8 a jpeg for a text model")),
    ]
    for i, item in enumerate(inputs):
        await harness.publish_item(job, i, item, model="minilm", top_k=2)
    await harness.start_runner()
    await harness.wait_drained(await harness.work_stream_last_seq())

    records = sorted(await harness.records(job), key=lambda r: r.item_index)
    assert [r.item_index for r in records] == [0, 1, 2, 3, 4]
    cat, kitten, tax, zero_shot, image = records
    for record in (cat, kitten, tax):
        assert record.state == prediction_pb2.PREDICTION_STATE_SUCCEEDED, record.error
        assert len(record.embedding) == 384 and not record.classes
        assert abs(float(np.linalg.norm(record.embedding)) - 1.0) < 1e-3  # L2-normalized
    vectors = {r.item_index: np.asarray(r.embedding) for r in (cat, kitten, tax)}
    assert float(vectors[0] @ vectors[1]) > 0.5 > float(vectors[0] @ vectors[2])

    assert zero_shot.state == prediction_pb2.PREDICTION_STATE_SUCCEEDED, zero_shot.error
    assert zero_shot.classes[0].label == "animal"
    assert len(zero_shot.classes) == 2  # top_k of the three labels
    assert zero_shot.classes[0].score > zero_shot.classes[1].score

    # A kind the model does not take fails that item alone, saying which kinds it takes.
    assert image.state == prediction_pb2.PREDICTION_STATE_FAILED
    assert image.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "takes text" in image.error.message, image.error.message
