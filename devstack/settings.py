"""Settings of the local stack (``ferry up``); services keep their own settings classes."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from devstack import refusal_hold
from services.common import time_slice
from services.common.cpu_idle import CpuIdle


class StackSettings(BaseSettings):
    """Where the local stack keeps its state and which ports it uses (``FERRY_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="FERRY_", extra="ignore")

    state_dir: Path = Path(".ferry")
    """Postgres data, JetStream store, logs and the dev API key; git-ignored, kept between starts."""
    http_port: int = 8080
    """The public port: Envoy serves REST and native gRPC here."""
    host: str = "127.0.0.1"
    """Address every local process binds; loopback only."""
    dev_api_key: str = ""
    """The development API key; empty generates one on first start and keeps it in the state dir."""
    envoy_admin_port: int = 9901
    """Envoy's admin port (stats, /ready)."""
    nats_port: int = 4222
    """nats-server's client port."""
    otlp_endpoint: str = Field(
        default="", validation_alias=AliasChoices("FERRY_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    """OTLP/gRPC endpoint every service exports traces to; empty exports nothing."""
    results_url: str = Field(
        default="",
        validation_alias=AliasChoices("FERRY_GATEWAY_RESULTS_URL", "FERRY_JOBS_RESULTS_URL"),
    )
    """Where jobs' result files and executed notebooks are kept (either service's variable), given
    to the jobs service that writes them and the gateways that read them alike: empty for NATS
    JetStream Object Store, ``s3://<bucket>[/<prefix>]`` for S3."""
    trace: bool = False
    """Receive every process's spans locally (``ferry up --trace``) into ``<state_dir>/traces.jsonl``
    for ``ferry trace``; ignored when ``otlp_endpoint`` names a collector of the user's."""
    free_ports: bool = False
    """Pick free ports for every internal process (tests and side-by-side stacks)."""
    start_timeout_s: float = 180.0
    """How long each part may take to become ready."""
    inference_devices: str = Field(default="", validation_alias="FERRY_INFERENCE_DEVICES")
    """One inference process per device: ``all`` (every visible GPU; on a machine without one, as
    unset) or a list such as ``cuda:0,cuda:1``. Empty: ``inference_instances`` processes, each on
    ``FERRY_INFERENCE_DEVICE`` (auto). The gateway and the jobs runner balance over all of them."""
    inference_instances: int = Field(default=1, ge=1, le=64, validation_alias="FERRY_INFERENCE_INSTANCES")
    """Inference processes when no device list is given (on CPU: each gets cores / instances torch
    threads unless FERRY_INFERENCE_TORCH_THREADS says otherwise)."""
    inference_niceness: int = Field(default=0, ge=0, le=19, validation_alias="FERRY_INFERENCE_NICENESS")
    """How far behind the other processes inference's CPU comes (``devstack.infra.lower_priority``:
    its session's autogroup nice and its own): on a machine where the model shares cores with the
    front door, Envoy and the gateways then run first. 0: an equal share."""
    envoy_niceness: int = Field(default=-10, ge=-20, le=19, validation_alias="FERRY_ENVOY_NICENESS")
    """Envoy's CPU priority against the stack's other processes (its session's autogroup nice and
    its own, ``devstack.infra.raise_priority``). Below 0 (the default, -10: about 9 times the
    kernel's weight of a process at 0) Envoy's work comes first when the cores are busy: it is
    little (routing, and each over-bound call's 429, which Envoy answers itself), and at an equal
    share an over-bound call's 429 spent nearly all its time waiting for Envoy to get a core behind
    the model's threads (docs/benchmarks.md, session 9). Below 0 needs CAP_SYS_NICE (root);
    without it Envoy runs at 0, with a warning. 0: an equal share."""
    envoy_time_slice_us: int = Field(
        default=time_slice.FRONT_DOOR_SLICE_US,
        ge=0,
        le=time_slice.MAX_SLICE_US,
        validation_alias="FERRY_ENVOY_TIME_SLICE_US",
    )
    """The scheduler time slice of Envoy's threads (``services.common.time_slice``, Linux 6.12 and
    later), as the gateways' ``FERRY_GATEWAY_TIME_SLICE_US``: with the kernel's own (0.7-3 ms) a
    call that wakes Envoy while a job's process holds the core waits for that burst or the next
    tick. 0: the kernel's own."""
    envoy_refusals_per_s: int = Field(
        default=refusal_hold.REFUSALS_PER_S, ge=0, le=1_000_000, validation_alias="FERRY_ENVOY_REFUSALS_PER_S"
    )
    """Refusals (429s) a second each Envoy worker answers at full speed, shared among the
    connections it refused in the last 10 s (each gets at least one a second); a connection refused
    faster than its share, as a client that resends at once instead of waiting the Retry-After,
    has its next call held until its share allows one (at least ``envoy_refusal_hold_ms``), and a
    quarter of its share from then on (``devstack.refusal_hold``). 0: none is held."""
    envoy_refusal_hold_ms: int = Field(
        default=refusal_hold.HOLD_MS, ge=1, le=60_000, validation_alias="FERRY_ENVOY_REFUSAL_HOLD_MS"
    )
    """The shortest hold of a call from a connection past its share of refusals before Envoy looks
    at it (the default is the Retry-After each refusal gives: 1 s); the longest is 10 s."""
    envoy_max_held: int = Field(
        default=refusal_hold.MAX_HELD, ge=1, le=1_000_000, validation_alias="FERRY_ENVOY_MAX_HELD"
    )
    """Calls Envoy holds at once at most (each is a stream it keeps); past it a worker closes the
    connection (GOAWAY) of the next call it would hold, so that client has to reconnect."""
    gateway_niceness: int = Field(default=-10, ge=-20, le=19, validation_alias="FERRY_GATEWAY_NICENESS")
    """The callers' gateways' CPU priority against the stack's other processes, as
    ``envoy_niceness`` (the upload lane keeps its own, ``UPLOAD_NICENESS``): the default, -10, puts
    them beside Envoy, ahead of the jobs runner's and NATS's bursts during a bulk job
    (docs/benchmarks.md, session 10). Below 0 needs CAP_SYS_NICE (root); without it the gateways
    run at 0, with a warning. 0: an equal share."""
    inference_job_lane: int = Field(default=1, ge=0, le=16, validation_alias="FERRY_INFERENCE_JOB_LANE")
    """Inference processes (``inference-jobs``) that only the jobs runner calls, each in its own
    scheduling group at nice ``inference_job_lane_niceness`` (``devstack.infra.lower_priority``)
    and, once serving, in the ``cpu.idle`` cgroup (``inference_job_lane_cpu_idle``), while
    callers' Predicts stay on the normal inference processes at normal priority: a bulk job's
    model compute then runs only on CPU the other tenants' calls leave (Envoy, the gateways and
    the normal inference come first across groups, which ``SCHED_IDLE`` inside one process does
    not give). Each costs a model process's memory (1.1-1.4 GB RSS on CPU with the default
    models). 1 (the default since session 13: in session 12's quiet runs the other tenant's p99
    during a 200-photo job had a median of 1.20x quiet with the lane against 1.52x without it,
    docs/benchmarks.md); 0: the jobs runner calls the normal inference processes (a machine
    short of memory; test stacks, ``tests/e2e/stack.py``)."""
    inference_job_lane_niceness: int = Field(
        default=19, ge=1, le=19, validation_alias="FERRY_INFERENCE_JOB_LANE_NICENESS"
    )
    """The job lane's autogroup nice (and its own nice). At 19 the kernel weighs its group about
    15/1024 of a group at nice 0, so a waking Envoy or gateway barely waits for it
    (``python -m benchmarks.wake_latency``); the price is that a job crawls while other
    processes keep the cores busy. A lower value (10: weight 110/1024) gives the job a larger
    share under such load, and the other tenants' calls less."""
    inference_job_lane_cpu_idle: CpuIdle = Field(
        default="auto", validation_alias="FERRY_INFERENCE_JOB_LANE_CPU_IDLE"
    )
    """Whether the job lane's processes run in the machine's ``cpu.idle`` cgroup
    (``services.common.cpu_idle``) once their models are loaded and warmed up, instead of at their
    autogroup nice alone: an idle group is preempted at once by any other waking thread, where a
    group at nice 19 only weighs less. A lane process starts outside the group and joins it itself
    when it is ready (``FERRY_INFERENCE_CPU_IDLE_ONCE_LOADED``): a whole process in the group from
    its start starved while it loaded on a busy machine (at load 15-19 it was not serving within
    ``ferry up``'s 180 s, docs/benchmarks.md session 8). ``auto`` (the default): where the cgroup
    can be written (root), else one log line and the nice alone; ``off``: the nice alone (the lane's
    job threads join the group anyway, ``FERRY_INFERENCE_JOB_CPU_IDLE``)."""
    jobs_runner_cpu_idle: CpuIdle = Field(default="auto", validation_alias="FERRY_JOBS_RUNNER_CPU_IDLE")
    """Whether the jobs runners' processes run in the machine's ``cpu.idle`` cgroup
    (``services.common.cpu_idle``; ``auto``, the default, where it can be written: root) or at the
    normal priority (``off``). In the group, a bulk job's reading of items from NATS and sending
    them to inference gives the cores up at once to any other waking thread, as inference's job
    threads already do: the other tenants' calls waited for a core behind the runner in half of
    their waits of 2 ms or more (docs/benchmarks.md, session 11). The price: a job crawls while
    other work keeps every core busy. The job queue's API runs apart (``job_queues``) at the normal
    priority, so a submission never waits behind a runner (session 8 measured 0.9-1.35 s when it
    shared the runner's idle process)."""
    job_queues: int = Field(default=1, ge=0, le=4)
    """Processes (``jobs-queue``) that serve only the job queue's API (the gateway's submissions,
    cancellations and retries: ``FERRY_JOBS_ROLES=queue``), apart from the runners, which then
    only run the queued work (``FERRY_JOBS_ROLES=runner``). 0: every runner serves the API too,
    at the runners' priority."""
    nats_memory_limit: str = Field(default="256MiB", pattern=r"^(off|[0-9]+(B|KiB|MiB|GiB|TiB)?)$")
    """nats-server's soft memory limit (Go's ``GOMEMLIMIT``, in its units: ``256MiB``, ``1GiB``;
    ``off``: none). A bulk job's claim checks make NATS load the Object Store's 8 MB file blocks
    holding their images; the blocks are garbage once read, and Go lets garbage grow as large as
    what is live before collecting it: the limit makes it collect sooner instead. docker-compose.yml
    sets the same; on Kubernetes set it on NATS's pods (deploy/helm/ferry/README.md). Below what
    NATS keeps live it costs CPU (more collections), not failures (docs/reliability.md, "Abuse")."""
    nats_nodes: int = Field(default=1, ge=1, le=7)
    """nats-server processes: 1, or a cluster of 3 (or more) on loopback, each node its own client
    and route port, with every stream replicated ``min(3, nodes)`` ways (docs/scaling.md)."""
    gateways: int = Field(default=1, ge=1, le=16)
    """Gateway processes; Envoy balances over those whose gRPC health says SERVING."""
    upload_gateways: int = Field(default=1, ge=0, le=4)
    """Gateway processes that Envoy sends uploads (CreateUpload), result downloads (GetJobResults)
    and large OIP inference calls to, and nothing else, run at a
    lower CPU priority (nice ``UPLOAD_NICENESS``): a bulk upload's zip checks and Object Store
    writes then neither share the other tenants' gateway event loop nor take their CPU first.
    0: uploads go to the gateways."""
    gateway_uploads_cpu_idle: CpuIdle = Field(
        default="off", validation_alias="FERRY_GATEWAY_UPLOADS_CPU_IDLE"
    )
    """Whether the upload lane's processes run in the machine's ``cpu.idle`` cgroup
    (``services.common.cpu_idle``) instead of at nice ``UPLOAD_NICENESS``: a big upload's checks
    (a 200 MiB manifest's line count, a zip's entries) then give way at once to any other waking
    thread, at the price of crawling while other processes keep every core busy. ``auto``: where
    the cgroup can be written (root), else one log line and the nice alone; ``off``: never."""
    runners: int = Field(default=1, ge=1, le=16)
    """Jobs runner processes; they share one durable consumer, so each item goes to one of them."""
    stores: int = Field(default=1, ge=1, le=16)
    """Store processes; they share the ingest consumer and answer queries alike."""

    @property
    def stream_replicas(self) -> int:
        """Copies of each stream: every node up to 3 (JetStream's usual replication)."""
        return min(3, self.nats_nodes)
