"""Settings of the inference service (environment variables ``FERRY_INFERENCE_<FIELD>``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """What the inference service loads and how it batches."""

    model_config = SettingsConfigDict(env_prefix="FERRY_INFERENCE_", extra="ignore")

    grpc_port: int = 50052
    """Port of the gRPC server."""
    metrics_port: int = 9102
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["efficientnet-lite0"], min_length=1
    )
    """Models to load at start, comma-separated (for example ``efficientnet-lite0``); see the registry."""
    device: str = "auto"
    """Torch device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (CUDA when available, else CPU)."""
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    """Largest batch the dynamic batcher hands to one forward pass."""
    max_batch_delay_ms: float = Field(default=5.0, ge=0)
    """Longest time the batcher waits after a batch's first item for more items to join it."""
    torch_threads: int = Field(default=0, ge=0)
    """Intra-op threads torch uses on CPU; 0 keeps torch's default (one per core)."""
    decode_threads: int = Field(default=2, ge=1)
    """Threads that decode and preprocess images, off the event loop."""
    warmup_batches: int = Field(default=2, ge=0)
    """Dummy full batches each model runs before the service reports SERVING."""

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """Accepts ``"a,b"`` from the environment as well as a list."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value
