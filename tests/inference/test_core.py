"""The protocol-neutral core: plain calls in, plain outcomes out, on the real models."""

from __future__ import annotations

import asyncio
import struct
import threading

import pytest

from ferry.types.v1 import types_pb2
from services.inference import protos
from services.inference.calls import Answered, Call, Refused, Request
from services.inference.models.contract import IMAGE, TEXT, InvalidInput, ModelInput, Options
from tests.inference.conftest import CAT_CLASSES, ESPRESSO, RunningInference


async def test_a_call_answers_each_input_in_order_without_any_protobuf(
    inference: RunningInference, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    model = inference.service.models["efficientnet-lite0"]
    call = Call(
        [
            ModelInput(IMAGE, image=cat_jpeg),
            InvalidInput("its tensor has datatype 'INT8'; FP32 is supported"),
            ModelInput(IMAGE, image=b"not an image"),
            ModelInput(IMAGE, image=coffee_jpeg),
        ],
        Options(top_k=2),
    )
    cat, unconverted, broken, coffee = await model.predict(call)
    assert isinstance(cat, Answered) and isinstance(coffee, Answered)
    assert cat.answer.classes[0].index in CAT_CLASSES and len(cat.answer.classes) == 2
    assert coffee.answer.classes[0].index == ESPRESSO
    # The call's clock: from its arrival, so never less than the input's own decode and queue.
    assert coffee.timing.total_ms >= coffee.timing.decode_ms + coffee.timing.queue_ms > 0
    assert coffee.timing.batch_size >= 1
    assert unconverted == Refused(
        "input 1 is refused: its tensor has datatype 'INT8'; FP32 is supported", "INVALID_INPUT"
    )
    assert isinstance(broken, Refused) and broken.reason == "INVALID_IMAGE" and "input 2" in broken.message
    # Every place in the queue bound was given back.
    assert model.waiting == 0


async def test_an_ensemble_answers_one_request_with_each_members_timing(
    inference: RunningInference, cat_jpeg: bytes
) -> None:
    ensemble = inference.service.models["imagenet-ensemble"]
    answered = await ensemble.answer(Request(ModelInput(IMAGE, image=cat_jpeg), Options(top_k=3)))
    assert answered.answer.classes[0].index in CAT_CLASSES and len(answered.answer.classes) == 3
    assert [name for name, _ in answered.members] == ["efficientnet-lite0", "mobilenet-v2"]
    assert all(timing.inference_ms > 0 for _, timing in answered.members)


async def test_an_ensemble_refuses_a_text_input(inference: RunningInference) -> None:
    ensemble = inference.service.models["imagenet-ensemble"]
    with pytest.raises(InvalidInput, match="takes an image"):
        await ensemble.answer(Request(ModelInput(TEXT, text="a cat")))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_tensor_holding_nan_or_infinity_is_invalid_input(value: float) -> None:
    # A model only spreads them: NaN scores that no JSON parser reads (OIP REST answered `NaN`).
    contents = [0.0] * 11 + [value]
    for tensor in (
        types_pb2.Tensor(datatype="FP32", shape=[3, 2, 2], fp32_contents=contents),
        types_pb2.Tensor(datatype="FP32", shape=[3, 2, 2], raw_contents=struct.pack("<12f", *contents)),
    ):
        with pytest.raises(InvalidInput, match="NaN or infinity"):
            protos.model_input(types_pb2.Input(tensor=tensor))
    finite = types_pb2.Tensor(datatype="FP32", shape=[3, 2, 2], fp32_contents=[0.5] * 12)
    assert protos.model_input(types_pb2.Input(tensor=finite)).tensor is not None


@pytest.mark.parametrize(
    "shape",
    [
        [2**32, 2**32],  # numpy's int64 product wraps to 0: it matched no contents, and reshape raised
        [2**62, 4],
        [2**40, 2**40, 0],
        [1] * 1000,
        [2**62] * 20_000,
    ],
)
def test_a_tensor_shape_too_large_to_count_is_invalid_input_not_a_500(shape: list[int]) -> None:
    # Each was a 500 with a traceback in inference (a Predict with a tensor input, a job item).
    with pytest.raises(InvalidInput, match=r"elements|dimensions|positive"):
        protos.model_input(types_pb2.Input(tensor=types_pb2.Tensor(datatype="FP32", shape=shape)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_payload_holding_nan_or_infinity_is_invalid_input(value: float) -> None:
    # JSON cannot spell them, so turning the payload into the model's JSON object raised ValueError:
    # a native gRPC Predict was a 500, and a job item was retried for 5 minutes, then failed.
    item = types_pb2.Input()
    item.payload.update({"scores": [0.5, {"deep": value}]})
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        protos.model_input(item)


async def test_a_lone_request_on_an_idle_model_is_decoded_in_the_batch_thread(
    inference: RunningInference, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = inference.service.models["efficientnet-lite0"]
    preprocess = model.model.preprocess
    threads: list[str] = []

    def recorded(item: ModelInput) -> object:
        threads.append(threading.current_thread().name)
        return preprocess(item)

    monkeypatch.setattr(model.model, "preprocess", recorded)
    request = Request(ModelInput(IMAGE, image=cat_jpeg), Options(top_k=1))
    alone = await model.answer(request)
    # One hand-off: decoded in the thread of the batch that ran it, not in a decode thread first.
    assert len(threads) == 1 and threads[0].startswith("batch-efficientnet-lite0")
    assert alone.answer.classes[0].index in CAT_CLASSES
    assert alone.timing.decode_ms > 0 and alone.timing.inference_ms > 0
    # Broken bytes on that path are still the input's own refusal, and every place is given back.
    [broken] = await model.predict(Call([ModelInput(IMAGE, image=b"not an image")], Options(top_k=1)))
    assert isinstance(broken, Refused) and broken.reason == "INVALID_IMAGE"
    assert model.waiting == 0 and model.batcher.queued == 0

    # With the decode queue busy, a request takes the usual path: a decode thread, then the batch.
    threads.clear()
    release = threading.Event()
    busy = asyncio.ensure_future(model._decoder.run(lambda: release.wait(10)))
    await asyncio.sleep(0.05)
    answered = asyncio.ensure_future(model.answer(request))
    await asyncio.sleep(0.05)
    release.set()
    await busy
    assert (await answered).answer.classes[0].index in CAT_CLASSES
    assert len(threads) == 1 and threads[0].startswith("decode")
