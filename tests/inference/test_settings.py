"""Settings choose the models; a name that is not registered stops the service before it binds."""

from __future__ import annotations

import pytest

from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings


def test_models_come_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_INFERENCE_MODELS", " efficientnet-lite0 , other-model,")
    settings = InferenceSettings()
    assert settings.models == ["efficientnet-lite0", "other-model"]
    assert (settings.grpc_port, settings.metrics_port) == (50052, 9102)
    # Unset: each model's batch size is chosen from measurement at warm-up.
    assert settings.max_batch_size is None
    assert (settings.max_queue, settings.max_image_pixels, settings.max_batch_delay_ms) == (
        256,
        50_000_000,
        0,
    )


def test_unknown_model_fails_at_start_listing_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"'resnet-9000'.*available: .*efficientnet-lite0"):
        InferenceService(InferenceSettings(models=["efficientnet-lite0", "resnet-9000"]))
