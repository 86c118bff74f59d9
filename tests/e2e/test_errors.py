"""Errors a user will hit: the right HTTP status, the right gRPC code, a message to act on."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.rest import Rest, b64

pytestmark = pytest.mark.e2e

# gRPC status codes as Envoy writes them into the JSON body.
INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED = 3, 5, 16


def expect_error(answer: tuple[int, dict[str, Any]], http: int, grpc_code: int, words: str) -> None:
    status, body = answer
    assert status == http, body
    assert body["code"] == grpc_code, body
    assert words.lower() in body["message"].lower(), body


def test_unknown_model_is_404(rest: Rest, cat_jpeg: bytes) -> None:
    answer = rest.post("/v1/models/no-such-model:predict", {"image": {"content": b64(cat_jpeg)}})
    expect_error(answer, 404, NOT_FOUND, "efficientnet-lite0")  # names what is available


def test_get_unknown_model_is_404(rest: Rest) -> None:
    expect_error(rest.get("/v1/models/no-such-model"), 404, NOT_FOUND, "no-such-model")


def test_bytes_that_are_not_an_image_are_400(rest: Rest) -> None:
    answer = rest.post(
        "/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(b"definitely not a jpeg")}}
    )
    expect_error(answer, 400, INVALID_ARGUMENT, "image")


def test_missing_image_is_400(rest: Rest) -> None:
    expect_error(rest.post("/v1/models/efficientnet-lite0:predict", {}), 400, INVALID_ARGUMENT, "image")


def test_top_k_out_of_range_is_400(rest: Rest, cat_jpeg: bytes) -> None:
    answer = rest.post(
        "/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(cat_jpeg)}, "top_k": 5000}
    )
    expect_error(answer, 400, INVALID_ARGUMENT, "top_k")


def test_empty_job_is_400(rest: Rest) -> None:
    answer = rest.post("/v1/jobs", {"model": "efficientnet-lite0", "inputs": []})
    expect_error(answer, 400, INVALID_ARGUMENT, "input")


def test_job_for_unknown_model_is_404(rest: Rest, cat_jpeg: bytes) -> None:
    answer = rest.post("/v1/jobs", {"model": "nope", "inputs": [{"image": {"content": b64(cat_jpeg)}}]})
    expect_error(answer, 404, NOT_FOUND, "nope")


def test_unknown_prediction_is_404(rest: Rest) -> None:
    expect_error(rest.get(f"/v1/predictions/{uuid.uuid4()}"), 404, NOT_FOUND, "prediction")


def test_unknown_job_is_404(rest: Rest) -> None:
    expect_error(rest.get(f"/v1/jobs/{uuid.uuid4()}"), 404, NOT_FOUND, "job")


def test_malformed_id_is_400(rest: Rest) -> None:
    expect_error(rest.get("/v1/jobs/not-a-uuid"), 400, INVALID_ARGUMENT, "jobs/")


def test_missing_api_key_is_401(stack: dict[str, Any]) -> None:
    anonymous = Rest(stack["http_url"], api_key=None)
    expect_error(anonymous.get("/v1/models"), 401, UNAUTHENTICATED, "authorization")


def test_wrong_api_key_is_401(stack: dict[str, Any]) -> None:
    stranger = Rest(stack["http_url"], api_key="not-a-real-key")
    expect_error(stranger.get("/v1/predictions"), 401, UNAUTHENTICATED, "invalid API key")


def test_unknown_rest_path_is_404(rest: Rest) -> None:
    status, _ = rest.get("/v1/nothing-here")
    assert status == 404
