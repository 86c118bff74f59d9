"""inference's own gRPC API, served exactly as in production, with the real weights."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from PIL import Image

from ferry.inference.v1 import inference_service_pb2 as pb
from ferry.types.v1 import types_pb2
from tests.inference.conftest import CAT_CLASSES, ESPRESSO, RunningInference
from tests.inference.test_preprocessing import huge_png


def image(content: bytes) -> types_pb2.Input:
    return types_pb2.Input(image=types_pb2.Image(content=content))


SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_is_serving_only_after_warm_up(inference: RunningInference) -> None:
    # Polled from the moment the port is bound: loading and warming up take far longer than a poll.
    # (overall "", the InferenceService's own name)
    assert inference.health_seen[0] == (NOT_SERVING, NOT_SERVING)
    assert inference.health_seen[-1] == (SERVING, SERVING)


async def test_a_loaded_model_answers_while_the_others_load(inference: RunningInference) -> None:
    # efficientnet-lite0 loads first; minilm, the ensemble's mobilenet-v2 and agree follow for
    # seconds. Meanwhile its calls are answered, while overall health still says NOT_SERVING, so
    # balancers and probes keep waiting for the whole.
    assert (NOT_SERVING, SERVING) in inference.health_seen
    assert inference.early_classes and set(inference.early_classes) <= CAT_CLASSES
    # An admin's load would race with the start's own loading: it is turned away, retryable.
    assert inference.early_load == "UNAVAILABLE NOT_READY"


async def test_list_models_describes_the_loaded_model(inference: RunningInference) -> None:
    answer = await inference.stub.ListModels(pb.ListModelsRequest())
    [model] = [m for m in answer.models if m.name == "models/efficientnet-lite0"]
    assert (model.name, model.task, model.labels_count, model.ready) == (
        "models/efficientnet-lite0",
        "image-classification",
        1000,
        True,
    )


async def test_a_batch_answers_each_input_in_order(
    inference: RunningInference, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    request = pb.PredictRequest(
        model="efficientnet-lite0",
        inputs=[image(cat_jpeg), image(b"not an image at all"), image(coffee_jpeg)],
        top_k=3,
    )
    cat, broken, coffee = (await inference.stub.Predict(request)).results
    assert cat.classes[0].index in CAT_CLASSES and cat.classes[0].label == "tiger cat"
    assert len(cat.classes) == 3
    assert [c.score for c in cat.classes] == sorted((c.score for c in cat.classes), reverse=True)
    assert coffee.classes[0].index == ESPRESSO and coffee.classes[0].label == "espresso"
    assert coffee.timing.inference_ms > 0 and coffee.timing.batch_size >= 1
    assert broken.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "input 1" in broken.error.message and "JPEG" in broken.error.message
    assert "BytesIO" not in broken.error.message
    assert not broken.classes


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.PredictRequest(model="resnet-9000", inputs=[image(b"x")], top_k=1), "NOT_FOUND", "available"),
        (pb.PredictRequest(model="efficientnet-lite0", inputs=[], top_k=1), "INVALID_ARGUMENT", "input"),
        (
            pb.PredictRequest(model="efficientnet-lite0", inputs=[image(b"x")], top_k=0),
            "INVALID_ARGUMENT",
            "top_k",
        ),
    ],
)
async def test_bad_requests_get_a_clear_status(
    inference: RunningInference, request_: pb.PredictRequest, code: str, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inference.stub.Predict(request_)
    assert caught.value.code() == getattr(grpc.StatusCode, code)
    assert words in (caught.value.details() or "")


async def test_more_than_256_inputs_is_invalid(inference: RunningInference, cat_jpeg: bytes) -> None:
    request = pb.PredictRequest(model="efficientnet-lite0", inputs=[image(cat_jpeg)] * 257, top_k=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inference.stub.Predict(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "257" in (caught.value.details() or "")


async def test_a_huge_image_is_refused_from_its_header_not_decoded(
    inference: RunningInference, cat_jpeg: bytes
) -> None:
    # 13000 x 13000: under PIL's own limit, about 12 s and 1 GB to decode.
    request = pb.PredictRequest(
        model="efficientnet-lite0", inputs=[image(huge_png(13000)), image(cat_jpeg)], top_k=1
    )
    huge, cat = (await inference.stub.Predict(request, timeout=5)).results
    assert huge.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "input 0" in huge.error.message and "13000x13000" in huge.error.message
    assert "limit is 50 megapixels" in huge.error.message
    assert "FERRY_INFERENCE_MAX_IMAGE_PIXELS" in huge.error.message
    assert cat.classes[0].index in CAT_CLASSES


@pytest.mark.parametrize(
    "priority", [types_pb2.PRIORITY_HIGH, types_pb2.PRIORITY_LOW, types_pb2.PRIORITY_UNSPECIFIED]
)
async def test_every_priority_is_served(
    inference: RunningInference, coffee_jpeg: bytes, priority: int
) -> None:
    request = pb.PredictRequest(
        model="efficientnet-lite0", inputs=[image(coffee_jpeg)], top_k=1, priority=priority
    )  # type: ignore[arg-type]
    [coffee] = (await inference.stub.Predict(request)).results
    assert coffee.classes[0].index == ESPRESSO


async def test_an_unknown_priority_is_invalid(inference: RunningInference, coffee_jpeg: bytes) -> None:
    request = pb.PredictRequest(model="efficientnet-lite0", inputs=[image(coffee_jpeg)], top_k=1, priority=7)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inference.stub.Predict(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PRIORITY_HIGH" in (caught.value.details() or "")


async def test_a_full_model_queue_answers_resource_exhausted_at_once(inference: RunningInference) -> None:
    served = inference.service.models["efficientnet-lite0"]
    small = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(small, format="PNG")
    flood = pb.PredictRequest(model="efficientnet-lite0", inputs=[image(small.getvalue())] * 256, top_k=1)
    first = inference.stub.Predict(flood)
    for _ in range(600):  # until its 256 inputs hold the model's whole queue bound
        if served.batcher.queued or served.waiting:
            break
        await asyncio.sleep(0.01)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await inference.stub.Predict(flood)
    finally:
        first.cancel()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "FERRY_INFERENCE_MAX_QUEUE" in (caught.value.details() or "")
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.reason == "QUEUE_FULL"
    assert status.details[1].Unpack(retry) and retry.retry_delay.ToNanoseconds() > 0
    # The cancelled flood gives its places back: the next call is served.
    for _ in range(600):
        if not served.batcher.queued and not served.waiting:
            break
        await asyncio.sleep(0.01)
    single = pb.PredictRequest(model="efficientnet-lite0", inputs=[image(small.getvalue())], top_k=1)
    assert (await inference.stub.Predict(single)).results[0].classes
