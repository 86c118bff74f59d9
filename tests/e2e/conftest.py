"""The whole stack, started once for the e2e tests with ``ferry up``, as a user starts it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data as skimage_data

from devstack.infra import free_port
from tests.e2e.otlp import OtlpCollector
from tests.e2e.rest import Rest
from tests.e2e.stack import RunningStack

API_KEY = "ferry-test-key-0123456789"


def _jpeg(pixels: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    """scikit-image's bundled photo of Chelsea the cat."""
    return _jpeg(skimage_data.chelsea())


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    """scikit-image's bundled photo of a cup of coffee."""
    return _jpeg(skimage_data.coffee())


#: The models the package's stack loads: the ensemble brings mobilenet-v2 along. The console's
#: browser tests (tests/e2e/console) use efficientnet-lite0 and minilm of them.
E2E_MODELS = "efficientnet-lite0,imagenet-ensemble,minilm,agree"


@pytest.fixture(scope="package")
def otlp_collector() -> Iterator[OtlpCollector]:
    collector = OtlpCollector(free_port())
    collector.start()
    yield collector
    collector.stop()


@pytest.fixture(scope="package")
def stack(
    tmp_path_factory: pytest.TempPathFactory, otlp_collector: OtlpCollector
) -> Iterator[dict[str, Any]]:
    """Endpoints of a running local stack (Envoy, gateway, inference, jobs, store, NATS, Postgres)."""
    root = Path(tmp_path_factory.mktemp("stack"))
    running = RunningStack(
        root / "state",
        {
            "FERRY_DEV_API_KEY": API_KEY,
            "FERRY_OTLP_ENDPOINT": otlp_collector.endpoint,
            # Every shipped model (tests/e2e/test_models.py): minilm adds about 8 s to the start.
            "FERRY_INFERENCE_MODELS": E2E_MODELS,
        },
    )
    endpoints = running.start()
    yield endpoints
    running.stop()


@pytest.fixture(scope="package")
def rest(stack: dict[str, Any]) -> Rest:
    """REST/JSON through Envoy with the dev API key."""
    return Rest(stack["http_url"], API_KEY)
