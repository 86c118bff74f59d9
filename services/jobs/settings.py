"""Settings of the jobs runner, read from ``FERRY_JOBS_*`` environment variables."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.messaging import JOB_ITEMS_SUBJECT_PREFIX
from services.common.settings import NatsSettings, ServiceSettings


class JobsSettings(ServiceSettings, NatsSettings):
    """Everything the jobs runner can be told; defaults run against the local stack."""

    model_config = SettingsConfigDict(env_prefix="FERRY_JOBS_", extra="ignore")

    grpc_port: int = 50054
    """Port of the gRPC server (health and reflection only: the runner has no API of its own)."""
    metrics_port: int = 9104
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    inference_target: str = "127.0.0.1:50052"
    """host:port of the inference service."""
    consumer_name: str = "jobs-runner"
    """Durable JetStream consumer; every runner process with the same name shares the work."""
    subject_filter: str = f"{JOB_ITEMS_SUBJECT_PREFIX}.>"
    """Work subjects this consumer takes. FERRY_WORK is a work queue, so no two consumers may have
    overlapping filters; change it only to split priorities between consumers (or in tests)."""
    fetch_batch: int = Field(default=8, ge=1, le=256)
    """Most items pulled in one fetch; items of one job and model go to inference as one request."""
    fetch_timeout_s: float = Field(default=1.0, gt=0)
    """How long one pull waits for items when the stream is empty."""
    max_inflight: int = Field(default=32, ge=1)
    """Most items this process runs at once (across fetches)."""
    retry_budget_s: float = Field(default=300.0, ge=0)
    """How long an item keeps being retried after transient failures (inference down, NATS
    unreachable) before it becomes a FAILED record: the backoff it may wait in all. It outlasts
    an inference restart by far; 0 turns retries off."""
    backoff_base_s: float = Field(default=0.5, gt=0)
    """Delay before the second attempt; it doubles with every attempt after that."""
    backoff_max_s: float = Field(default=30.0, gt=0)
    """Longest delay between attempts."""
    inference_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline of one inference Predict call (a whole fetched group shares it). The call waits
    for inference to be ready within it, so it also covers a restart of inference."""
    publish_timeout_s: float = Field(default=5.0, gt=0)
    """How long to wait for JetStream to store a record before the item is retried."""
    ack_wait_s: float = Field(default=10.0, ge=1.0)
    """Seconds an unacknowledged item stays with a runner that stopped answering for it before
    JetStream hands it to another runner. A live runner reports progress on its items every third
    of this, however long they take; below a second, those reports would flood NATS."""
    cancel_cache_s: float = Field(default=2.0, ge=0)
    """How long a "job is not cancelled" answer is reused; a cancellation is remembered for good."""

    @model_validator(mode="after")
    def _backoff_cap_is_above_its_start(self) -> Self:
        # A cap below the first delay would silently make every delay the cap.
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be at least backoff_base_s "
                f"({self.backoff_base_s})"
            )
        return self
