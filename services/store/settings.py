"""store's settings, from ``FERRY_STORE_*`` environment variables."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import NatsSettings, ServiceSettings


class StoreSettings(ServiceSettings, NatsSettings):
    """How store reaches Postgres and NATS, and how it ingests."""

    model_config = SettingsConfigDict(env_prefix="FERRY_STORE_", extra="ignore")

    grpc_port: int = 50053
    """Port of store's internal gRPC API."""
    metrics_port: int = 9103
    """Port of the Prometheus /metrics endpoint."""
    database_url: str = ""
    """Postgres URI, for example postgresql://user:pass@host:5432/ferry?sslmode=verify-full (required).

    Any Postgres 13+ works. TLS is set in the URI as libpq does: ``sslmode`` (disable, prefer,
    require, verify-ca, verify-full), ``sslrootcert``, ``sslcert``, ``sslkey``.
    """
    dev_api_key: str = Field(
        default="", validation_alias=AliasChoices("FERRY_STORE_DEV_API_KEY", "FERRY_DEV_API_KEY")
    )
    """A development API key to make sure exists at start (stored only as its SHA-256)."""
    dev_tenant: str = "default"
    """The tenant the development key belongs to."""
    consumer_name: str = "store-ingest"
    """Durable JetStream consumer that ingests record events; replicas share it."""
    job_events_consumer: str = "store-job-events"
    """Durable JetStream consumer of job events (how manifest expansions go); replicas share it."""
    ingest_batch_size: int = Field(default=1_000, ge=1, le=10_000)
    """Most events written in one transaction (a fetch returns at once with what is there, so a
    large batch costs a lone record no wait; under load it saves a transaction per 1,000 rows)."""
    ingest_concurrency: int = Field(default=2, ge=1, le=16)
    """Batches in flight at once (pull subscriptions on the shared consumer): one is decoded while
    another is written, so Python and Postgres work side by side. The second and later pull only
    while fetches come back full (a backlog): while records trickle, one loop pulls."""
    ingest_max_wait_s: float = Field(default=0.1, gt=0)
    """How long one fetch waits to fill a batch; also the most a lone record waits to be written.

    A fetch takes at once what the consumer has; only on an idle stream does it wait, and then
    it keeps its pull open until a batch is full or this deadline, so a short window keeps
    records readable right after the prediction; busy streams fill batches at once.
    """
    ingest_retry_delay_s: float = Field(default=2.0, ge=0)
    """Redelivery delay of a batch whose write failed (for example while Postgres is down)."""
    pool_min_size: int = Field(default=1, ge=0)
    """Fewest pooled Postgres connections."""
    pool_max_size: int = Field(default=10, ge=1)
    """Most pooled Postgres connections."""
    statement_timeout_ms: int = Field(default=30_000, ge=0)
    """Postgres ``statement_timeout`` of every pooled connection (0: none); migrations run without it."""
    retention_days: int = Field(default=30, ge=0)
    """Predictions older than this many days are deleted in the background; 0 keeps them forever."""
    retention_interval_s: float = Field(default=300.0, gt=0)
    """How often the retention task looks for expired predictions."""
    retention_batch_size: int = Field(default=5_000, ge=1)
    """Most rows one retention DELETE removes; each batch is its own short transaction."""
    job_stall_timeout_s: float = Field(default=3600.0, ge=0)
    """A queued or running job none of whose items finished for this long, and whose items are in no
    queue (the work stream is empty), is failed (JOB_STALLED), never left waiting for good; an
    expanding job that read no line for this long too. 0 never fails one."""
    job_stall_check_interval_s: float = Field(default=60.0, gt=0)
    """How often stalled jobs are looked for."""
