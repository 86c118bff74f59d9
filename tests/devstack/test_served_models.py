"""``ferry up`` serves every shipped model unless FERRY_INFERENCE_MODELS names some, and says which."""

from __future__ import annotations

import pytest

from devstack.models import served_models
from devstack.stack import Endpoints, banner


def test_every_model_of_the_models_file_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_INFERENCE_MODELS", raising=False)
    monkeypatch.delenv("FERRY_INFERENCE_MODELS_FILE", raising=False)
    served, origin = served_models()
    assert set(served) == {"efficientnet-lite0", "mobilenet-v2", "minilm", "imagenet-ensemble", "agree"}
    assert origin.startswith("every model of models.toml")


def test_the_variable_chooses_and_the_banner_says_what_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_INFERENCE_MODELS", "minilm, efficientnet-lite0")
    served, origin = served_models()
    assert served == ["minilm", "efficientnet-lite0"] and origin == "FERRY_INFERENCE_MODELS"
    endpoints = Endpoints("http://h:1", "h:1", "http://h:2", "nats://h:3", "pg", "key", "/logs")
    endpoints.models, endpoints.models_origin = served, origin
    assert "models        minilm, efficientnet-lite0   (FERRY_INFERENCE_MODELS)" in banner(endpoints, 1.0)
