"""Request checks: what passes, and that what fails says what is accepted."""

from __future__ import annotations

import uuid

import grpc
import pytest

from ferry.types.v1 import types_pb2
from services.common import limits, validation
from services.common.errors import FerryError

MiB = 1024 * 1024


def image_input(content: bytes) -> types_pb2.Input:
    return types_pb2.Input(image=types_pb2.Image(content=content))


def invalid(call: object, *args: object, **kwargs: object) -> FerryError:
    assert callable(call)
    with pytest.raises(FerryError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


@pytest.mark.parametrize("name", ["models/efficientnet-lite0", "efficientnet-lite0"])
def test_model_name_and_bare_id_normalise_to_the_id(name: str) -> None:
    assert validation.model_id(name) == "efficientnet-lite0"


@pytest.mark.parametrize("name", ["", "models/", "models/a/b", "models/../etc", "has space", "jobs/x"])
def test_malformed_model_names_say_the_expected_form(name: str) -> None:
    error = invalid(validation.model_id, name)
    assert "models/<model>" in error.message
    assert "models/efficientnet-lite0" in error.message


def test_model_error_names_the_field() -> None:
    assert invalid(validation.model_id, "", field="name").message.startswith("name is empty")


def test_top_k_zero_means_the_default() -> None:
    assert validation.top_k(0, default=5, maximum=100) == 5
    assert validation.top_k(1, default=5, maximum=100) == 1
    assert validation.top_k(100, default=5, maximum=100) == 100


@pytest.mark.parametrize("value", [-1, 101, 5000])
def test_top_k_out_of_range_names_the_range(value: int) -> None:
    error = invalid(validation.top_k, value, default=5, maximum=100)
    assert "top_k" in error.message and "between 1 and 100" in error.message


def test_image_present_and_within_the_limit_passes() -> None:
    assert validation.image_content(types_pb2.Image(content=b"\xff\xd8jpeg"), max_bytes=10) == b"\xff\xd8jpeg"


@pytest.mark.parametrize("image", [None, types_pb2.Image(), types_pb2.Image(content=b"")])
def test_missing_or_empty_image_is_refused(image: types_pb2.Image | None) -> None:
    assert "image" in invalid(validation.image_content, image, max_bytes=10).message


def test_oversized_image_names_the_limit() -> None:
    error = invalid(validation.image_content, types_pb2.Image(content=b"x" * (MiB + 1)), max_bytes=MiB)
    assert str(MiB) in error.message and "1 MiB" in error.message
    assert error.reason == "IMAGE_TOO_LARGE"


def test_job_needs_at_least_one_input() -> None:
    error = invalid(validation.job_inputs, [], max_items=10, max_bytes=MiB)
    assert "a job needs at least one input" in error.message


def test_job_with_too_many_inputs_names_the_limit() -> None:
    error = invalid(validation.job_inputs, [image_input(b"x")] * 3, max_items=2, max_bytes=MiB)
    assert "at most 2 inputs" in error.message


def test_job_input_errors_name_the_index() -> None:
    inputs = [image_input(b"ok"), image_input(b"ok"), types_pb2.Input()]
    error = invalid(validation.job_inputs, inputs, max_items=10, max_bytes=MiB)
    assert error.reason == "MISSING_INPUT" and error.message.startswith("inputs[2] is empty")
    assert error.metadata["field"] == "inputs[2]"
    inputs = [image_input(b"ok"), types_pb2.Input(image=types_pb2.Image())]
    error = invalid(validation.job_inputs, inputs, max_items=10, max_bytes=MiB)
    assert error.reason == "MISSING_IMAGE" and "inputs[1].image" in error.message
    inputs = [image_input(b"ok"), image_input(b"x" * 11)]
    error = invalid(validation.job_inputs, inputs, max_items=10, max_bytes=10)
    assert "inputs[1].image" in error.message and "10 bytes" in error.message


def text_input(content: str, labels: tuple[str, ...] = ()) -> types_pb2.Input:
    return types_pb2.Input(text=types_pb2.Text(content=content, candidate_labels=labels))


def payload_input(**fields: str | float) -> types_pb2.Input:
    item = types_pb2.Input()
    item.payload.update(fields)
    return item


def test_a_job_takes_every_kind_of_input_a_predict_takes() -> None:
    tensor = types_pb2.Tensor(datatype="FP32", shape=[2], fp32_contents=[1.0, 2.0])
    inputs = [
        image_input(b"jpeg"),
        text_input("a cat on a sofa"),
        text_input("a cat on a sofa", ("animal", "tax")),
        payload_input(image="abc", top_k=2),
        types_pb2.Input(tensor=tensor),
    ]
    validation.job_inputs(inputs, max_items=5, max_bytes=100)


@pytest.mark.parametrize(
    ("item", "reason", "field"),
    [
        (text_input("  "), "MISSING_TEXT", "inputs[1].text.content"),
        (text_input("x" * (limits.MAX_TEXT_CHARS + 1)), "TEXT_TOO_LONG", "inputs[1].text.content"),
        (text_input("x", ("l",) * 65), "TOO_MANY_LABELS", "inputs[1].text.candidate_labels"),
        (payload_input(blob="x" * 200), "INPUT_TOO_LARGE", "inputs[1].payload"),
        (
            types_pb2.Input(tensor=types_pb2.Tensor(datatype="FP32", shape=[64], fp32_contents=[0.0] * 64)),
            "INPUT_TOO_LARGE",
            "inputs[1].tensor",
        ),
    ],
)
def test_a_bad_job_input_of_any_kind_is_refused_naming_its_index_and_field(
    item: types_pb2.Input, reason: str, field: str
) -> None:
    error = invalid(validation.job_inputs, [text_input("fine"), item], max_items=10, max_bytes=100)
    assert error.reason == reason
    assert error.metadata["field"] == field
    assert field in error.message


def test_good_job_inputs_pass() -> None:
    validation.job_inputs([image_input(b"a"), image_input(b"b")], max_items=2, max_bytes=1)


def test_request_id_length_is_limited() -> None:
    assert validation.request_id("") == ""
    ok = "r" * limits.MAX_REQUEST_ID_CHARS
    assert validation.request_id(ok) == ok
    error = invalid(validation.request_id, ok + "r")
    assert str(limits.MAX_REQUEST_ID_CHARS) in error.message


def test_resource_names_parse_and_malformed_ones_show_the_form() -> None:
    job_id = uuid.uuid4()
    assert validation.resource_id(f"jobs/{job_id}", "jobs") == job_id
    assert "jobs/<uuid>" in invalid(validation.resource_id, "jobs/not-a-uuid", "jobs").message
    assert "predictions/<uuid>" in invalid(validation.resource_id, "", "predictions").message
