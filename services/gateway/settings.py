"""Settings of the gateway, read from ``FERRY_GATEWAY_*`` environment variables."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common import limits, time_slice
from services.common.channels import Targets
from services.common.settings import ImageFetchSettings, NatsSettings, ServiceSettings


class GatewaySettings(ServiceSettings, NatsSettings, ImageFetchSettings):
    """Everything the gateway can be told; defaults run against the local stack."""

    model_config = SettingsConfigDict(env_prefix="FERRY_GATEWAY_", extra="ignore")

    grpc_port: int = 50051
    """Port of the gRPC server; Envoy forwards REST (transcoded) and native gRPC here."""
    metrics_port: int = 9101
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    time_slice_us: int = Field(default=time_slice.FRONT_DOOR_SLICE_US, ge=0, le=time_slice.MAX_SLICE_US)
    """The scheduler time slice of this process's threads (``services.common.time_slice``; Linux
    6.12 and later): a short one lets a caller's call take a core as it wakes instead of waiting
    for a busy job's burst to end. 0: the kernel's own (0.7-3 ms); below 100 the kernel takes 100."""
    inference_target: Targets = "127.0.0.1:50052"
    """host:port of the inference service; several replicas comma-separated
    (``127.0.0.1:50052,127.0.0.1:50062``, IP addresses only) are balanced round robin over those
    that serve (``services.common.channels``). ``ferry up`` sets it from FERRY_INFERENCE_INSTANCES."""
    store_target: str = "127.0.0.1:50053"
    """host:port of the store service."""
    jobs_target: Targets = "127.0.0.1:50054"
    """host:port of the jobs service, whose job queue records and queues every job
    (``ferry.jobqueue.v1.JobQueueService``); several replicas comma-separated (IP addresses only)
    are balanced round robin over those whose queue serves. ``ferry up`` sets it from FERRY_RUNNERS."""
    inference_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline of one call to inference, retries included: a Predict waits in inference's batching
    queue, and for a restarting inference to come back."""
    model_load_timeout_s: float = Field(default=600.0, gt=0)
    """Deadline of loading or unloading a model on inference (LoadModel, the OIP repository's load):
    loading reads weights, warms up and may measure its batch size."""
    store_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of one call to store, retries included (API key lookups, job and prediction reads
    and writes)."""
    jobs_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline of one call to the job queue (a part of a CreateJob's items, CancelJob, RetryJob),
    retries included; the queue itself spends up to FERRY_JOBS_SUBMIT_PUBLISH_TIMEOUT_S on a publish."""
    publish_timeout_s: float = Field(default=10.0, gt=0)
    """How long one publish (a batch of prediction records) keeps trying to get JetStream's
    acknowledgement (retrying across a NATS restart) before the call answers UNAVAILABLE."""
    record_batch_max_records: int = Field(default=256, ge=1)
    """Most prediction records in one JetStream message (docs/architecture.md, *Records*); a batch
    is also kept under three quarters of NATS's max_payload."""
    record_batches_in_flight: int = Field(default=1, ge=1)
    """Record batches awaiting JetStream's acknowledgement at once before new records wait to go
    in the next batch; 1 is group commit: under load, each batch holds what arrived during the
    previous one's round trip."""
    request_id_ttl_s: float = Field(default=limits.REQUEST_ID_TTL_S, ge=60, le=limits.MAX_REQUEST_ID_TTL_S)
    """How long a ``request_id`` remembers a digest of the request it came with (in the shared
    ``ferry_request_ids`` KV bucket): within it, the same id with other inputs is refused 409
    REQUEST_ID_REUSED; after it, such a reuse is no longer detected (docs/api.md, *Retries*).
    The last gateway started sets the bucket's TTL: give every replica the same value."""
    max_image_bytes: int = Field(default=limits.DEFAULT_IMAGE_BYTES, gt=0)
    """Largest encoded image accepted, in bytes. Job items are also bounded by NATS's max_payload."""
    oip_rest_off_loop_bytes: int = Field(default=256 * 1024, ge=0)
    """An Open Inference Protocol REST body (``/v2/models/{m}/infer``) or answer larger than this
    is read or written on a worker thread, not the event loop: a 16 MiB JSON tensor took the loop
    1.3-2 s, during which every other caller of this gateway waited. 0: every one on a thread.
    A thread does not free the interpreter from a body of strings or nulls (``json`` holds the
    GIL), so Envoy sends a body of this size or more to the upload lane's gateways, when there is
    a lane, and a native gRPC ``ModelInfer`` message of this size or more too (gRPC parses it
    whole on the event loop before any handler runs) (``ferry up`` renders Envoy's routes from
    this value; compose's and the chart's Envoy configs have the default)."""
    max_job_items: int = Field(default=limits.MAX_JOB_ITEMS, ge=1)
    """Most inputs in one job."""
    max_upload_bytes: int = Field(default=limits.UPLOAD_FILE_BYTES, gt=0)
    """Largest upload (``POST /v1/uploads``: a JSONL manifest or a zip of images), counted as it
    streams in; the edge streams the body through (it would have to hold it to bound it)."""
    upload_max_entries: int = Field(default=limits.UPLOAD_MAX_ENTRIES, ge=1)
    """Most files in a zip upload, or non-blank lines in a JSONL manifest (UPLOAD_TOO_MANY_ENTRIES)."""
    upload_max_unpacked_bytes: int = Field(default=limits.UPLOAD_MAX_UNPACKED_BYTES, gt=0)
    """Most bytes a zip upload's files hold unpacked (UPLOAD_UNPACKED_TOO_LARGE)."""
    upload_max_compression_ratio: int = Field(default=limits.UPLOAD_MAX_COMPRESSION_RATIO, ge=1)
    """Largest unpacked-to-packed ratio of one zip file (UPLOAD_UNPACKED_TOO_LARGE): a zip bomb's mark."""
    upload_quota_bytes: int = Field(default=limits.UPLOAD_TENANT_QUOTA_BYTES, gt=0)
    """Most upload bytes one tenant keeps stored at once (UPLOAD_QUOTA_EXCEEDED, 429) until they expire."""
    upload_buffer_bytes: int = Field(default=limits.UPLOAD_BUFFER_BYTES, ge=64 * 1024)
    """Bytes of one upload held in memory before they are written to the spool file."""
    upload_spool_dir: str = ""
    """Folder of the spool files uploads are written to while they arrive and are checked (a zip's
    directory is at its end); empty: the system's temporary folder. Needs room for
    ``upload_spool_bytes``."""
    upload_spool_bytes: int = Field(default=limits.UPLOAD_SPOOL_BYTES, gt=0)
    """Bytes the uploads in flight in one gateway process may hold in ``upload_spool_dir``, all
    together; an upload that would pass it is refused 429 OVERLOADED with a wait. Keep it under
    the folder's room (the chart's ``tmpSizeLimit``)."""
    max_batch_predict_inputs: int = Field(default=limits.DEFAULT_BATCH_PREDICT_INPUTS, ge=1)
    """Most inputs in one BatchPredict call (inference takes at most 256 per request); more go in
    several calls, or in a job."""
    default_top_k: int = Field(default=limits.DEFAULT_TOP_K, ge=1)
    """Classes returned when a request's top_k is 0."""
    max_top_k: int = Field(default=limits.MAX_TOP_K, ge=1)
    """Largest top_k a request may ask for."""
    auth_cache_ttl_s: float = Field(default=30.0, ge=0)
    """How long a resolved API key is reused without asking store; a revoked key works this long.
    Unknown keys are remembered for at most 5 s, so a new key works almost at once."""
    auth_stale_ttl_s: float = Field(default=3600.0, ge=0)
    """How long after its last successful lookup a key keeps working while store (or Postgres) cannot
    be asked: predictions keep flowing through a database outage. 0 turns this off."""
    catalog_ttl_s: float = Field(default=2.0, ge=0)
    """How long the list of served models is reused without asking inference (a model name not in
    it, or inference's NOT_FOUND, refreshes it early); past it the call that notices refreshes it
    in the background and answers from the list on hand (catalog.STALE_S). 0: ask every time."""
    rate_limit_per_s: float = Field(default=100.0, ge=0)
    """Requests a second one API key may make unless its record sets its own limit; 0: no limit."""
    rate_limit_burst: int = Field(default=0, ge=0)
    """Requests a key may make at once above its rate unless its record says; 0: twice the rate."""
    auth_failure_rate_per_s: float = Field(default=5.0, ge=0)
    """Lookups in store of keys the gateway does not know allowed a second per source address, with
    bursts of twice that; from all sources together ten times that (bursts of twice that too):
    the documented cap on failed lookups reaching store, at most ``10 * rate * T + 20 * rate`` in
    any T seconds (``admission.lookup_cap``). Both hold for all gateways together (each takes 1/n).
    Beyond them such calls get 429 without a lookup. 0: no bound."""
    shares_rate_limits: bool = True
    """Whether this gateway counts among those that split each key's rate limit (it says so on
    NATS once a second: services/gateway/peers.py). The upload lane's gateways (``ferry up``,
    compose and the chart's ``gateway-uploads``) do not: they serve only bulk bytes (uploads,
    result downloads, large OIP calls), and counting them would halve every other gateway's
    share."""
    max_inflight: int = Field(default=256, ge=0)
    """Most unary calls one gateway works on at once; beyond it a call gets 429 OVERLOADED at once
    instead of waiting behind the others. Streams are not counted (``max_streams_per_tenant``
    bounds them). 0: no bound."""
    max_streams_per_tenant: int = Field(default=limits.DEFAULT_TENANT_STREAMS, ge=0)
    """Most streams (WatchJob, GetJobResults, CreateUpload) one tenant may hold open at once, all
    gateways together (each holds 1/n, as for rate limits); one more gets 429 TOO_MANY_STREAMS.
    Envoy keeps at most limits.EDGE_STREAMS open for every tenant together: without this bound one
    tenant's watches took them all, and every other tenant's watch was refused. 0: no bound."""
    predict_latency_tolerance: float = Field(default=0.0, ge=0)
    """Opt-in latency protection: when set (for example 2), predictions are admitted while
    inference serves them (queue, decode, forward pass) within this many times the best time seen;
    the gateway learns how many may be in flight for that and refuses more at once (429
    OVERLOADED) instead of queueing them. 0 (the default): off, because a batching model's latency
    rises by design under load (a batch of 4 takes longer than one item) and the bound then refuses
    clients the model would have served well: at 16 closed-loop clients it cut throughput to about
    half (docs/benchmarks.md). The static bounds (``max_inflight`` here, inference's ``max_queue``)
    always apply."""
    min_inflight_predict: int = Field(default=4, ge=1)
    """The fewest predictions in flight that bound allows, however slow they get."""
    max_inflight_predict: int = Field(default=64, ge=1)
    """The most predictions in flight that bound can learn to allow."""
    default_predict_deadline_s: float = Field(default=30.0, gt=0)
    """Deadline of a Predict (or ModelInfer) call whose client sent none (REST callers never do)."""
    default_jobs_deadline_s: float = Field(default=60.0, gt=0)
    """Deadline of a job write (CreateJob, CancelJob, RetryJob) whose client sent none."""
    default_read_deadline_s: float = Field(default=10.0, gt=0)
    """Deadline of any other call (reads, admin) whose client sent none."""
    watch_poll_s: float = Field(default=0.5, gt=0)
    """How often a WatchJob stream reads its job's progress from store."""
    watch_max_s: float = Field(default=3600.0, gt=0)
    """Longest one WatchJob stream lasts; a client still interested watches again."""
    watch_keepalive_s: float = Field(default=60.0, gt=0)
    """A WatchJob stream answers its job again after this long without a change, so no proxy
    cuts it as idle (Envoy's stream_idle_timeout is 5 minutes) while an item is retried."""
    results_url: str = ""
    """Where jobs' result files (and executed notebooks) are read from: empty for NATS JetStream
    Object Store (bucket ferry_job_results), or ``s3://<bucket>[/<prefix>]`` for an S3-compatible
    store (the ``s3`` extra; credentials and region from the usual AWS_* variables,
    ``AWS_ENDPOINT_URL`` for a store other than AWS). The jobs service writes them: give it the
    same store (FERRY_JOBS_RESULTS_URL; the chart's ``results.url`` sets both)."""
    results_timeout_s: float = Field(default=240.0, gt=0)
    """Deadline of asking the job queue for a finished job's result file (WriteResultFile), which
    builds it on first use; under Envoy's 5-minute stream idle timeout, since a download sends
    nothing before its file exists. A build that outlasts it goes on in the jobs service, and the
    next GetJobResults waits for that build."""
    startup_timeout_s: float = Field(default=180.0, gt=0)
    """How long start() waits for inference and store to report SERVING before giving up."""

    @model_validator(mode="after")
    def _within_limits(self) -> Self:
        # What the gateway lets through, inference (or NATS, or the edge) must accept.
        limits.check_settings(
            self,
            "FERRY_GATEWAY_",
            {
                "max_top_k": (limits.MAX_TOP_K, "inference lists at most that many classes"),
                "max_batch_predict_inputs": (
                    limits.MAX_INPUTS_PER_REQUEST,
                    "inference takes at most that many inputs per request",
                ),
                "max_image_bytes": (
                    limits.MAX_IMAGE_BYTES,
                    "a larger image does not fit the edge's body limit",
                ),
                "max_job_items": (limits.MAX_JOB_ITEMS, "the most items one job may hold"),
                "max_upload_bytes": (limits.UPLOAD_FILE_BYTES, "the edge's limit on one upload"),
                "upload_max_entries": (limits.UPLOAD_MAX_ENTRIES, "a job's most items"),
                "upload_max_unpacked_bytes": (
                    limits.UPLOAD_MAX_UNPACKED_BYTES,
                    "what one upload may cost the object store",
                ),
                "upload_max_compression_ratio": (
                    limits.UPLOAD_MAX_COMPRESSION_RATIO,
                    "past it a zip file is a bomb, not images",
                ),
                "upload_buffer_bytes": (limits.UPLOAD_BUFFER_BYTES, "an upload's memory in the gateway"),
                "max_streams_per_tenant": (
                    limits.MAX_TENANT_STREAMS,
                    f"a quarter of the {limits.EDGE_STREAMS} streams the edge keeps open for all tenants",
                ),
            },
        )
        return self

    @model_validator(mode="after")
    def _spool_takes_an_upload(self) -> Self:
        if self.upload_spool_bytes < self.max_upload_bytes:
            raise ValueError(
                f"upload_spool_bytes ({self.upload_spool_bytes}) is less than max_upload_bytes "
                f"({self.max_upload_bytes}): no upload of the largest size would ever be taken; raise "
                "FERRY_GATEWAY_UPLOAD_SPOOL_BYTES or lower FERRY_GATEWAY_MAX_UPLOAD_BYTES"
            )
        return self

    @model_validator(mode="after")
    def _default_top_k_is_allowed(self) -> Self:
        # A request with top_k 0 must not be refused by the gateway's own default.
        if self.default_top_k > self.max_top_k:
            raise ValueError(
                f"default_top_k ({self.default_top_k}) exceeds max_top_k ({self.max_top_k}); "
                "lower FERRY_GATEWAY_DEFAULT_TOP_K or raise FERRY_GATEWAY_MAX_TOP_K"
            )
        return self
