"""Settings of the gateway, read from ``FERRY_GATEWAY_*`` environment variables."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import NatsSettings, ServiceSettings


class GatewaySettings(ServiceSettings, NatsSettings):
    """Everything the gateway can be told; defaults run against the local stack."""

    model_config = SettingsConfigDict(env_prefix="FERRY_GATEWAY_", extra="ignore")

    grpc_port: int = 50051
    """Port of the gRPC server; Envoy forwards REST (transcoded) and native gRPC here."""
    metrics_port: int = 9101
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    inference_target: str = "127.0.0.1:50052"
    """host:port of the inference service."""
    store_target: str = "127.0.0.1:50053"
    """host:port of the store service."""
    inference_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline of one call to inference, retries included: a Predict waits in inference's batching
    queue, and for a restarting inference to come back."""
    store_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of one call to store, retries included (API key lookups, job and prediction reads
    and writes)."""
    publish_timeout_s: float = Field(default=10.0, gt=0)
    """How long one publish keeps trying to get JetStream's acknowledgement (retrying across a NATS
    restart) before the call answers UNAVAILABLE."""
    max_publish_inflight: int = Field(default=128, ge=1)
    """Most job items one CreateJob publishes at once (their acks are all awaited)."""
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    """Largest encoded image accepted, in bytes. Job items are also bounded by NATS's max_payload."""
    max_job_items: int = Field(default=10_000, ge=1)
    """Most inputs in one job."""
    default_top_k: int = Field(default=5, ge=1)
    """Classes returned when a request's top_k is 0."""
    max_top_k: int = Field(default=100, ge=1)
    """Largest top_k a request may ask for."""
    auth_cache_ttl_s: float = Field(default=30.0, ge=0)
    """How long a resolved API key is reused without asking store; a revoked key works this long.
    Unknown keys are remembered for at most 5 s, so a new key works almost at once."""
    auth_stale_ttl_s: float = Field(default=3600.0, ge=0)
    """How long after its last successful lookup a key keeps working while store (or Postgres) cannot
    be asked: predictions keep flowing through a database outage. 0 turns this off."""
    watch_poll_s: float = Field(default=0.5, gt=0)
    """How often a WatchJob stream reads its job's progress from store."""
    watch_max_s: float = Field(default=3600.0, gt=0)
    """Longest one WatchJob stream lasts; a client still interested watches again."""
    startup_timeout_s: float = Field(default=180.0, gt=0)
    """How long start() waits for inference and store to report SERVING before giving up."""

    @model_validator(mode="after")
    def _default_top_k_is_allowed(self) -> Self:
        # A request with top_k 0 must not be refused by the gateway's own default.
        if self.default_top_k > self.max_top_k:
            raise ValueError(
                f"default_top_k ({self.default_top_k}) exceeds max_top_k ({self.max_top_k}); "
                "lower FERRY_GATEWAY_DEFAULT_TOP_K or raise FERRY_GATEWAY_MAX_TOP_K"
            )
        return self
