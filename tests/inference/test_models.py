"""Every shipped model answers correctly on real inputs through the inference service's gRPC API."""

from __future__ import annotations

import base64
import io

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from PIL import Image
from skimage import data as skimage_data

from ferry.inference.v1 import inference_service_pb2 as pb
from ferry.models.v1 import model_pb2
from ferry.types.v1 import types_pb2
from services.inference.models.contract import IMAGE, Item, ModelInput, Options
from services.inference.models.efficientnet import TRANSFORM
from services.inference.preprocessing import decode_image
from tests.inference.conftest import CAT_CLASSES, ESPRESSO, RunningInference, encode
from tests.inference.test_preprocessing import reference

CAT_SENTENCE = "a cat sleeping on a sofa"


def image(content: bytes) -> types_pb2.Input:
    return types_pb2.Input(image=types_pb2.Image(content=content))


def text(content: str, *labels: str) -> types_pb2.Input:
    return types_pb2.Input(text=types_pb2.Text(content=content, candidate_labels=labels))


def payload(**fields: object) -> types_pb2.Input:
    value = struct_pb2.Struct()
    value.update(fields)
    return types_pb2.Input(payload=value)


async def predict(
    inference: RunningInference, model: str, *inputs: types_pb2.Input, top_k: int = 3
) -> list[pb.PredictResult]:
    answer = await inference.stub.Predict(pb.PredictRequest(model=model, inputs=inputs, top_k=top_k))
    return list(answer.results)


async def test_metadata_describes_every_model(inference: RunningInference) -> None:
    models = {m.name: m for m in (await inference.stub.ListModels(pb.ListModelsRequest())).models}
    assert set(models) == {
        "models/efficientnet-lite0",
        "models/mobilenet-v2",
        "models/imagenet-ensemble",
        "models/minilm",
        "models/agree",
    }
    assert all(m.state == model_pb2.MODEL_STATE_READY and m.ready for m in models.values())
    mobilenet = models["models/mobilenet-v2"]
    assert (mobilenet.task, mobilenet.labels_count, mobilenet.device, mobilenet.version) == (
        "image-classification",
        1000,
        "cpu",
        "1",
    )
    assert [(t.name, t.datatype) for t in mobilenet.inputs] == [("image", "BYTES")]
    assert (mobilenet.max_batch_size, mobilenet.batch_size_source, mobilenet.max_queue) == (
        8,
        "configured",
        256,
    )
    minilm = models["models/minilm"]
    assert minilm.task == "text-embedding" and minilm.labels_count == 0
    embedding = minilm.outputs[0]
    assert (embedding.name, embedding.datatype, list(embedding.shape)) == ("embedding", "FP32", [384])
    assert list(models["models/imagenet-ensemble"].members) == [
        "models/efficientnet-lite0",
        "models/mobilenet-v2",
    ]
    assert {name: m.graph for name, m in models.items()} == {
        "models/efficientnet-lite0": "aoti",
        "models/mobilenet-v2": "torchscript",
        "models/imagenet-ensemble": "",
        "models/minilm": "eager",
        "models/agree": "",
    }
    agree = models["models/agree"]
    assert agree.task == "json" and agree.max_batch_size == 1
    assert "efficientnet-lite0 and mobilenet-v2" in agree.description  # the notebook's own docstring


async def test_mobilenet_v2_classifies_the_photos(
    inference: RunningInference, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    cat, coffee = await predict(inference, "mobilenet-v2", image(cat_jpeg), image(coffee_jpeg))
    assert cat.classes[0].index in CAT_CLASSES and cat.classes[0].label == "Egyptian cat"
    assert cat.classes[0].score > 0.5
    assert coffee.classes[0].index == ESPRESSO


async def test_an_image_model_takes_a_preprocessed_tensor_too(
    inference: RunningInference, coffee_jpeg: bytes
) -> None:
    pixels = TRANSFORM(decode_image(coffee_jpeg))
    as_values = types_pb2.Tensor(
        datatype="FP32", shape=list(pixels.shape), fp32_contents=pixels.ravel().tolist()
    )
    as_raw = types_pb2.Tensor(
        datatype="FP32", shape=list(pixels.shape), raw_contents=pixels.astype("<f4").tobytes()
    )
    wrong = types_pb2.Tensor(datatype="FP32", shape=[3, 2], fp32_contents=[0.0] * 6)
    values, raw, bad = await predict(
        inference,
        "efficientnet-lite0",
        types_pb2.Input(tensor=as_values),
        types_pb2.Input(tensor=as_raw),
        types_pb2.Input(tensor=wrong),
    )
    assert values.classes[0].index == ESPRESSO and raw.classes[0].index == ESPRESSO
    assert values.classes[0].score == pytest.approx(raw.classes[0].score)
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "[3, 224, 224]" in bad.error.message


async def test_an_input_of_the_wrong_kind_gets_its_own_error(
    inference: RunningInference, cat_jpeg: bytes
) -> None:
    words, cat = await predict(inference, "efficientnet-lite0", text("a tabby cat"), image(cat_jpeg))
    assert words.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "input 0" in words.error.message and "takes image or tensor" in words.error.message
    assert cat.classes[0].index in CAT_CLASSES
    [empty] = await predict(inference, "minilm", types_pb2.Input())
    assert "set one of image, text, payload or tensor" in empty.error.message


async def test_minilm_embeds_texts_as_normalized_vectors_that_mean_something(
    inference: RunningInference,
) -> None:
    cat, kitten, tax = await predict(
        inference,
        "minilm",
        text(CAT_SENTENCE),
        text("a kitten napping on a couch"),
        text("quarterly tax filing deadline"),
    )
    vectors = [np.asarray(r.embedding) for r in (cat, kitten, tax)]
    assert all(v.shape == (384,) for v in vectors)
    assert all(np.linalg.norm(v) == pytest.approx(1.0, abs=1e-4) for v in vectors)
    assert not cat.classes
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar == pytest.approx(0.78, abs=0.05)  # FACTS: 0.78 and 0.06
    assert unrelated == pytest.approx(0.06, abs=0.05)


async def test_minilm_classifies_zero_shot_with_candidate_labels(inference: RunningInference) -> None:
    [answer] = await predict(inference, "minilm", text(CAT_SENTENCE, "tax", "animal", "sports"), top_k=2)
    assert answer.classes[0].label == "animal"
    assert answer.classes[0].index == 1  # the label's position in candidate_labels
    assert len(answer.classes) == 2 and answer.classes[0].score > answer.classes[1].score
    assert not answer.embedding
    [repeated] = await predict(inference, "minilm", text(CAT_SENTENCE, "animal", "animal"))
    assert "repeat" in repeated.error.message


async def test_texts_of_one_request_batch_together(inference: RunningInference) -> None:
    results = await predict(inference, "minilm", *(text(f"sentence number {i}") for i in range(8)))
    assert max(r.timing.batch_size for r in results) > 1
    assert len({tuple(r.embedding) for r in results}) == 8  # each its own embedding


async def test_the_ensemble_averages_its_members_and_times_each(
    inference: RunningInference, cat_jpeg: bytes
) -> None:
    [ensemble] = await predict(inference, "imagenet-ensemble", image(cat_jpeg), top_k=3)
    assert ensemble.classes[0].index in CAT_CLASSES
    assert [m.model for m in ensemble.members] == ["efficientnet-lite0", "mobilenet-v2"]
    assert all(m.timing.inference_ms > 0 and m.timing.decode_ms > 0 for m in ensemble.members)
    members = [
        (await predict(inference, name, image(cat_jpeg), top_k=100))[0]
        for name in ("efficientnet-lite0", "mobilenet-v2")
    ]
    for answer in ensemble.classes:
        scores = [next((c.score for c in m.classes if c.index == answer.index), 0.0) for m in members]
        assert answer.score == pytest.approx(sum(scores) / 2, abs=1e-4)


async def test_the_notebook_model_answers_json(
    inference: RunningInference, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    coffee, cat, broken = await predict(
        inference,
        "agree",
        payload(image=base64.b64encode(coffee_jpeg).decode()),
        payload(image=base64.b64encode(cat_jpeg).decode(), top_k=2),
        payload(picture="none"),
    )
    agreed = dict(coffee.output)
    assert agreed["agreed"] is True and agreed["label"] == "espresso"
    assert agreed["summary"].startswith("Both models see espresso")
    assert set(agreed["scores"]) == {"efficientnet-lite0", "mobilenet-v2"}
    assert all(0.5 < s <= 1 for s in agreed["scores"].values())
    labels = dict(cat.output["labels"])
    assert cat.output["label"] in labels.values()
    assert len(cat.output["classes"]["mobilenet-v2"]) == 2
    assert broken.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert '"image"' in broken.error.message


async def test_a_model_answers_only_its_own_kind_of_input(inference: RunningInference) -> None:
    [answer] = await predict(inference, "agree", text("hello"))
    assert "takes payload" in answer.error.message


@pytest.mark.parametrize("model", ["efficientnet-lite0", "mobilenet-v2"])
@pytest.mark.parametrize("photo", ["chelsea", "coffee", "astronaut"])
def test_answers_match_those_of_the_reference_pil_preprocessing(
    inference: RunningInference, model: str, photo: str
) -> None:
    # The reference: torchvision's PIL transforms (PIL's bicubic resize, float normalisation per
    # image), as before preprocessing moved to uint8 pixels normalised per batch.
    served = inference.service.models[model]
    classifier = served.model
    content = encode(getattr(skimage_data, photo)())
    ours = Item(classifier.preprocess(ModelInput(IMAGE, image=content)), Options(top_k=5))
    expected = reference(Image.open(io.BytesIO(content)), classifier.transform).numpy()
    theirs = Item(expected, Options(top_k=5))
    new, old = classifier.forward([ours, theirs])
    assert [c.index for c in classifier.postprocess(new, ours.options).classes][:3] == [
        c.index for c in classifier.postprocess(old, theirs.options).classes
    ][:3]
    np.testing.assert_allclose(new, old, atol=0.01, rtol=0)
