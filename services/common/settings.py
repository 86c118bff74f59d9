"""Settings every service shares; each service subclasses this with its own env prefix."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import limits
from services.common.messaging import DUPLICATE_WINDOW_S


class ServiceSettings(BaseSettings):
    """Fields every Ferry service reads from its environment (``FERRY_<SERVICE>_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="FERRY_", extra="ignore")

    grpc_host: str = "127.0.0.1"
    """Address the gRPC server binds; use 0.0.0.0 inside containers."""
    grpc_port: int = 50051
    """Port of the gRPC server (health, reflection and the service's API)."""
    metrics_port: int = 9100
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    otlp_endpoint: str = ""
    """OTLP/gRPC endpoint for traces, for example http://127.0.0.1:4317; empty exports nothing."""
    log_level: str = "INFO"
    """Python logging level."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled."""
    shutdown_delay_s: float = Field(default=0.0, ge=0, le=60)
    """Seconds between reporting NOT_SERVING on SIGTERM and refusing new calls, while calls are
    still answered: the time balancers (Envoy's health checks, other replicas' clients, Kubernetes
    endpoints) take to stop sending here. 0 suits one process restarted by surge (its successor
    already listens); several replicas behind a balancer need it (``ferry up`` sets 5 s then).
    SIGINT skips it (calls under way still drain): it means the callers have stopped already, as
    when ``ferry up`` stops the whole stack, Envoy and gateways first."""
    max_message_bytes: int = limits.MAX_MESSAGE_BYTES
    """Largest gRPC message sent or received; images travel inside messages. The default is the
    largest body Envoy lets through (services/common/limits.py), so gRPC's own size refusal
    (RESOURCE_EXHAUSTED) never answers a request the edge admitted."""
    max_connection_age_s: float = Field(default=0.0, ge=0)
    """Seconds after which the server asks a client to reconnect (GOAWAY); 0 never does. Clients
    balance over the addresses a name resolves to when they connect, so without an age a replica
    an autoscaler adds gets no calls from channels opened before it; a reconnect re-resolves. Off
    by default because a stream (WatchJob) running past age + grace is cut; inference sets it."""
    max_connection_age_grace_s: float = Field(default=30.0, ge=0)
    """Seconds calls already running on an aged connection get to finish before it is closed."""


class NatsSettings(BaseSettings):
    """Mixin for services that talk to NATS JetStream."""

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server URL; several comma-separated for a cluster (the client fails over between them)."""
    nats_stream_replicas: int = Field(default=1, ge=1, le=5)
    """Copies JetStream keeps of each of Ferry's streams and buckets: 1 on a single NATS node, 3 on
    a cluster of 3 or more, so losing one node loses no queued item or unstored record."""
    nats_duplicate_window_s: float = Field(default=DUPLICATE_WINDOW_S, gt=0, le=7 * 24 * 3600)
    """How long each of Ferry's streams remembers a message id, so that a publish repeated within
    it is stored once (a repeat after it is stored again, and still recorded once: store keeps one
    row per record id). Give every service the same value: each sets the streams' config on start."""


class ImageFetchSettings(BaseSettings):
    """Mixin for services that fetch images by URL (the gateway for requests, the jobs service for
    manifest lines): the same policy under each service's prefix."""

    image_fetch_timeout_s: float = Field(default=10.0, gt=0)
    """Deadline of fetching one image given by URL (``image.uri``), redirects included."""
    image_fetch_max_redirects: int = Field(default=3, ge=0, le=10)
    """Redirects followed when fetching an image by URL; each one's address is checked again."""
    image_fetch_allow_networks: list[str] = Field(default_factory=list)
    """Networks (CIDRs, e.g. ``["10.20.0.0/16"]``) image URLs may reach although they are not
    public; by default loopback, private, link-local (cloud metadata) and reserved ones are refused."""
