"""Settings of the jobs runner, read from ``FERRY_JOBS_*`` environment variables."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common import cpus, limits, priorities
from services.common.channels import Targets
from services.common.messaging import JOB_ITEMS_SUBJECT_PREFIX, PRIORITIES
from services.common.notebooks import NotebookSettings
from services.common.settings import ImageFetchSettings, NatsSettings, ServiceSettings

#: The lane of a runner on a single subject (no split by priority): it takes whatever arrives.
DEFAULT_LANE = "normal"
#: What a jobs process can do (``roles``): serve the job queue's API, and run the queued work.
QUEUE_ROLE, RUNNER_ROLE = "queue", "runner"
ROLES = (QUEUE_ROLE, RUNNER_ROLE)


class JobsSettings(ServiceSettings, NatsSettings, NotebookSettings, ImageFetchSettings):
    """Everything the jobs runner can be told; defaults run against the local stack."""

    model_config = SettingsConfigDict(env_prefix="FERRY_JOBS_", extra="ignore")

    grpc_port: int = 50054
    """Port of the gRPC server: the job queue's internal API (``ferry.jobqueue.v1.JobQueueService``,
    called by the gateway), health and reflection."""
    metrics_port: int = 9104
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    max_connection_age_s: float = Field(default=30.0, ge=0)
    """Seconds after which a client of the job queue (the gateway) is asked to reconnect, resolving
    the jobs name again, so a runner an autoscaler (KEDA) adds gets submissions within this (plus
    10 % jitter). The queue's calls are unary and short, so none outlives the grace."""
    inference_target: Targets = "127.0.0.1:50052"
    """host:port of the inference service; several replicas comma-separated
    (``127.0.0.1:50052,127.0.0.1:50062``, IP addresses only) are balanced round robin over those
    that serve (``services.common.channels``). ``ferry up`` sets it from FERRY_INFERENCE_INSTANCES."""
    store_target: Targets = "127.0.0.1:50053"
    """host:port of the store service (jobs are recorded there before their items are queued);
    several replicas comma-separated are balanced round robin. ``ferry up`` sets it."""
    cpus: str = ""
    """Cores this process's threads may run on (``services.common.cpus``: ``1``, ``2-3``, ``0,2``,
    or ``last``, the highest core it may use); empty (the default): any. The runner's reading of
    items and sending them to inference runs at the normal priority; kept to the cores of
    inference's job threads (``FERRY_INFERENCE_JOB_CPUS``), a bulk job leaves the other cores to the
    front door (docs/jobs.md). Job submission and expansion run on those cores too."""

    @field_validator("cpus")
    @classmethod
    def _cores_exist(cls, value: str) -> str:
        cpus.parse(value)  # a malformed list, or one naming no core this process may use
        return value

    roles: str = ",".join(ROLES)
    """What this process does, comma-separated: ``queue``, the job queue's API
    (``JobQueueService``: the gateway's submissions, cancellations and retries, which record the
    job in store and queue its items); ``runner``, the queued work (running items, expanding
    manifests, notebooks). Both (the default): one process does all. ``ferry up`` runs them apart
    (``FERRY_JOB_QUEUES``): the runners where ``FERRY_JOBS_RUNNER_CPU_IDLE`` puts them, the API at
    the normal priority, so that a bulk job's reading and sending of items gives the cores up to
    other tenants' calls at once while a submission never waits behind it (docs/jobs.md)."""

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, value: str) -> str:
        named = [role.strip() for role in value.split(",") if role.strip()]
        unknown = sorted(set(named) - set(ROLES))
        if unknown or not named:
            raise ValueError(f"roles must name one or both of {', '.join(ROLES)}; got {value!r}")
        return ",".join(role for role in ROLES if role in named)

    @property
    def serves_queue(self) -> bool:
        """Whether this process answers the job queue's API."""
        return QUEUE_ROLE in self.roles.split(",")

    @property
    def runs_work(self) -> bool:
        """Whether this process runs items, expansions and notebooks."""
        return RUNNER_ROLE in self.roles.split(",")

    store_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of one call to store (CreateJob, CancelJob, RetryJob), retries included."""
    max_publish_inflight: int = Field(default=128, ge=1)
    """Most job items one SubmitJob (or RetryJob) publishes at once (their acks are all awaited)."""
    consumer_name: str = "jobs-runner"
    """Durable JetStream consumer; every runner process with the same name shares the work."""
    subject_filter: str = f"{JOB_ITEMS_SUBJECT_PREFIX}.>"
    """Work subjects this runner takes. A filter ending in ``.>`` is split into one consumer per
    priority (``<consumer_name>-high`` on ``<prefix>.high``, ...: see lanes.py); any other filter
    is one consumer named ``consumer_name``. FERRY_WORK is a work queue, so no two consumers may
    have overlapping filters (tests give each runner a subject of its own)."""
    priority_weights: dict[str, int] = Field(default_factory=priorities.default_weights)
    """Share of contended in-flight room per priority (JSON, e.g. ``{"high":6,"normal":3,"low":1}``):
    under a backlog of every priority, high gets 6 of every 10 fetches and low still 1."""
    fetch_batch: int = Field(default=8, ge=1, le=limits.MAX_INPUTS_PER_REQUEST)
    """Most items pulled in one fetch; items of one job and model go to inference as one request."""
    fetch_timeout_s: float = Field(default=1.0, gt=0)
    """How long one pull waits for items when the stream is empty."""
    max_inflight: int = Field(default=32, ge=1)
    """Most items this process runs at once (across fetches)."""
    max_input_bytes: int = Field(default=32 * limits.MIB, ge=1)
    """Most bytes of items' images read from the Object Store (claim checks: a zip's photos, a
    manifest's images) this process holds at once; items whose images would pass it wait, and a
    fetched group is sent to inference in parts that fit it. ``max_inflight`` bounds the items, not
    their size: 32 images of up to 10 MiB, held about three times over while they are read and
    sent, are far past the chart's 512 Mi for the runner. The default holds a fetch of 8 phone
    photos, or 3 images of the 10 MiB limit."""
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
    submit_publish_timeout_s: float = Field(default=10.0, gt=0)
    """How long one publish of a submitted job's item (or a cancellation mark) keeps trying to get
    JetStream's acknowledgement, across a NATS restart, before SubmitJob (CancelJob, RetryJob)
    answers UNAVAILABLE; a retry with the same request_id completes it."""
    ack_wait_s: float = Field(default=10.0, ge=1.0)
    """Seconds an unacknowledged item stays with a runner that stopped answering for it before
    JetStream hands it to another runner. A live runner reports progress on its items every third
    of this, however long they take; below a second, those reports would flood NATS."""
    queue_metrics_s: float = Field(default=2.0, gt=0)
    """How often the work consumers' backlog is read into the ferry_jobs_queue_* gauges."""
    cancel_cache_s: float = Field(default=2.0, ge=0)
    """How long a "job is not cancelled" answer is reused; a cancellation is remembered for good."""
    notebook_consumer: str = "jobs-notebooks"
    """Durable consumer of notebook jobs, shared by every runner process (one notebook at a time each)."""
    notebook_cell_timeout_s: float = Field(default=600.0, gt=0)
    """Longest one notebook cell may run; a cell that runs longer fails its job (NOTEBOOK_CELL_FAILED)."""
    results_url: str = ""
    """Where jobs' result files (built here: ``result_files.py``) and executed notebooks are kept:
    empty for the NATS Object Store bucket ferry_job_results, ``s3://bucket[/prefix]`` for S3; the
    gateways read them, so set it as their FERRY_GATEWAY_RESULTS_URL (the chart's ``results.url``
    sets both)."""

    expander_consumer: str = "jobs-expander"
    """Durable consumer of manifest expansion requests, shared by every jobs process."""
    max_expansions: int = Field(default=4, ge=1, le=64)
    """Manifests this process expands at once (each reads its manifest a chunk at a time)."""
    expansions_per_tenant: int = Field(default=1, ge=1, le=64)
    """Of those, most for one tenant: another tenant's manifest never waits behind a tenant's many."""
    expansion_chunk: int = Field(default=256, ge=1, le=4096)
    """Manifest lines read (and items published) before an expansion yields to the others and
    checks whether its job was cancelled."""
    expansion_ack_wait_s: float = Field(default=30.0, ge=1.0)
    """Seconds an expansion whose process stopped answering for it stays claimed before another
    process starts it again; a live one reports progress every third of this."""
    expansion_progress_s: float = Field(default=5.0, gt=0)
    """How often an expansion tells store how far it got (store fails an EXPANDING job that made
    no progress for its job_stall_timeout_s)."""

    def lanes(self) -> list[tuple[str, str, str]]:
        """(priority, consumer name, subject filter) of each consumer this runner fetches from."""
        if not self.subject_filter.endswith(".>"):
            return [(DEFAULT_LANE, self.consumer_name, self.subject_filter)]
        prefix = self.subject_filter.removesuffix(".>")
        return [(p, f"{self.consumer_name}-{p}", f"{prefix}.{p}") for p in PRIORITIES]

    @model_validator(mode="after")
    def _weights_name_every_priority(self) -> Self:
        if set(self.priority_weights) != set(PRIORITIES) or min(self.priority_weights.values()) < 1:
            raise ValueError(
                f"priority_weights must give each of {', '.join(PRIORITIES)} a weight of at least 1"
                f" (none may starve); got {self.priority_weights}"
            )
        return self

    @model_validator(mode="after")
    def _backoff_cap_is_above_its_start(self) -> Self:
        # A cap below the first delay would silently make every delay the cap.
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be at least backoff_base_s "
                f"({self.backoff_base_s})"
            )
        return self
