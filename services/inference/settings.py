"""Settings of the inference service (environment variables ``FERRY_INFERENCE_<FIELD>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common import cpus, limits
from services.common.cpu_idle import CpuIdle
from services.common.settings import ServiceSettings
from services.inference import openmp
from services.inference.models.config import DEFAULT_GRAPH, DEFAULT_GRAPH_DIR, DEFAULT_MODELS_FILE, Graph


class InferenceSettings(ServiceSettings):
    """What the inference service loads and how it batches."""

    model_config = SettingsConfigDict(env_prefix="FERRY_INFERENCE_", extra="ignore")

    grpc_port: int = 50052
    """Port of the gRPC server."""
    metrics_port: int = 9102
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    nats_url: str = ""
    """NATS (several comma-separated for a cluster) where the models an admin loaded or unloaded at
    runtime are kept (KV bucket ferry_models): set, they stay so across restarts and every replica
    converges to them; empty (the default), inference needs no NATS and a restart loads
    FERRY_INFERENCE_MODELS again."""
    nats_stream_replicas: int = Field(default=1, ge=1, le=5)
    """Copies NATS keeps of the ferry_models bucket (3 on a cluster of 3 or more)."""
    max_connection_age_s: float = Field(default=30.0, ge=0)
    """Seconds after which a client (gateway, runner) is asked to reconnect, resolving the inference
    name again, so a replica an autoscaler adds enters every caller's rotation within this (plus
    10 % jitter). Inference streams nothing, so its calls never outlive the grace."""
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["efficientnet-lite0"], min_length=1
    )
    """Models to load at start, comma-separated (for example ``efficientnet-lite0,minilm``): entry points
    of the ``ferry.models`` group or tables of the models file. An ensemble's members load with it."""
    models_file: Path = DEFAULT_MODELS_FILE
    """The TOML file of per-model settings (``[models.<id>]`` tables: version, device, batch and
    queue settings, instances, warm-up, ensemble members, notebook path); see docs/inference.md."""
    device: str = "auto"
    """Torch device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto`` (CUDA when available, else CPU)."""
    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    """Largest batch per forward pass. Unset: chosen per model at warm-up by timing batch sizes
    1, 2, 4, ... up to ``batch_size_search_max`` on this device as the model serves under load
    (its instances' passes side by side, each on its share of the threads) and keeping the
    smallest size within 5 % of the best throughput whose round of passes fits
    ``batch_latency_budget_ms``. Set: used as is, nothing is timed."""
    batch_size_search_max: int = Field(default=16, ge=1, le=1024)
    """Largest batch size tried at warm-up when ``max_batch_size`` is unset."""
    batch_latency_budget_ms: float = Field(default=250.0, gt=0)
    """Longest round of side-by-side passes a chosen batch size may take (at warm-up, on this device)."""
    keep_batch_sizes: bool = True
    """Keep each measured batch size in NATS KV (``ferry_batch_sizes``, with FERRY_INFERENCE_NATS_URL),
    keyed by the model's settings, the device and what it is (CPU or GPU model), torch's threads and
    version: a later start on the same kind of device uses it instead of timing again (3-4 s per
    image model on a 2-core CPU). False: measure at every start."""
    max_batch_delay_ms: float = Field(default=0.0, ge=0)
    """How long a busy model waits for its next batch to fill; an idle model never waits. 0 (the
    default) runs whatever queued while the previous batch ran, which suits CPUs; a few ms can
    pay off on a GPU, where a fuller batch costs little more."""
    max_queue: int = Field(default=256, ge=1)
    """Most inputs per model waiting to be decoded or run; beyond it Predict answers
    RESOURCE_EXHAUSTED (reason QUEUE_FULL) with retry advice at once."""
    priority_aging_ms: float = Field(default=1000.0, ge=0)
    """Priority head start: HIGH goes before NORMAL that arrived up to this long earlier, and before
    LOW that arrived up to twice this long earlier; older items keep their arrival order."""
    max_image_pixels: int = Field(default=limits.DEFAULT_IMAGE_PIXELS, ge=1)
    """Most pixels an input image may declare in its header; larger ones are refused before
    decoding (INVALID_ARGUMENT, reason IMAGE_TOO_LARGE). 50 M admits 48-megapixel phone photos;
    a 50-megapixel PNG still decodes for about 3 s on one core here, and 169 M took 12 s and 1 GB."""
    torch_threads: int = Field(default=0, ge=0)
    """Intra-op threads torch uses on CPU; 0 keeps torch's default (one per core)."""
    openmp_spin_count: int = Field(default=openmp.DEFAULT_SPIN_COUNT, ge=0)
    """How long torch's idle OpenMP threads spin for the next operation before they sleep
    (``GOMP_SPINCOUNT``, rounds; 10,000 is about 0.1 ms). GNU OpenMP's own default spins 300,000
    (about 3 ms): fine when torch has the cores to itself, but beside the decode threads, the
    gateway and the rest of the stack a spinning thread holds the core its partner needs: at
    10,000, inference spent 38.9 ms CPU per request under load against 31.4 at 0 (the default:
    sleep at once). Spinning may save a few ms on a batch-1 pass on an otherwise idle host (about
    6 ms measured once). An explicit ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` in the environment wins."""
    decode_threads: int = Field(default=2, ge=1)
    """Threads that decode and preprocess images, off the event loop."""
    idle_job_items: bool = True
    """Batch jobs' items (``PredictRequest.job_item``) decode, and batches made only of them run,
    on threads of their own at the lowest CPU priority (Linux ``SCHED_IDLE``; their OpenMP teams
    too): whatever else wakes on their core (Envoy, a gateway, a caller's input) runs at once
    instead of waiting for their time slice. Their share of the CPU against other processes stays
    the same. False: every input runs on the same threads (docs/inference.md, *Batch jobs' CPU*)."""
    job_cpu_idle: CpuIdle = "auto"
    """Whether those threads also join the machine's ``cpu.idle`` cgroup (``ferry-jobs`` under the
    cgroup v1 cpu controller, or a threaded child of this process's cgroup v2): ``SCHED_IDLE``
    ranks them only inside this process's group, the idle cgroup below every other group, so a
    waking Envoy or gateway preempts them at once. ``auto``: where the cgroup can be written (root,
    a writable ``/sys/fs/cgroup``), else one log line and ``SCHED_IDLE`` only; ``off``: never."""
    job_cpus: str = ""
    """Cores those threads may run on (``services.common.cpus``: ``1``, ``2-3``, ``0,2``, or
    ``last``, the highest core this process may use); empty (the default): any. Set together with
    ``FERRY_JOBS_CPUS``, the job's work then keeps to those cores and leaves the others to Envoy,
    the gateways and callers' Predicts, at the price of a job that uses only those cores even on an
    idle machine (docs/inference.md, *Batch jobs' CPU*)."""
    cpu_idle_once_loaded: CpuIdle = "off"
    """Whether this whole process joins the machine's ``cpu.idle`` cgroup once its models are
    loaded and warmed up (``services.common.cpu_idle``): for a process that only batch jobs call
    (``ferry up``'s job lane, ``FERRY_INFERENCE_JOB_LANE_CPU_IDLE``), so that any other waking
    thread preempts its work at once, while its start (loading, warm-up) still runs at its nice and
    cannot starve on a busy machine. ``auto``: where the cgroup can be written (root), else one log
    line and nothing changes; ``off`` (the default): never."""

    @field_validator("job_cpus")
    @classmethod
    def _cores_exist(cls, value: str) -> str:
        cpus.parse(value)  # a malformed list, or one naming no core this process may use
        return value

    warmup_batches: int = Field(default=2, ge=0)
    """Dummy full batches each model runs before the service reports SERVING."""
    graph: Graph = DEFAULT_GRAPH
    """How forward passes run, for models that support a graph (the image classifiers):
    ``torchscript`` traces and freezes the module at load; ``aoti`` compiles it ahead of time with
    AOTInductor (24-45 % less CPU per image; the first start builds it, see ``graph_dir``);
    ``eager`` runs it layer by layer. An
    eager module takes Python's GIL back between layers, and each time it can wait up to the
    interpreter's switch interval (5 ms) for the gRPC and decode threads: on this 2-core machine
    that doubled efficientnet-lite0's forward pass inside the service (docs/benchmarks.md)."""
    graph_dir: str = DEFAULT_GRAPH_DIR
    """Where ``aoti`` graphs are kept, one library per model, weights, torch and CPU: built once
    (minutes), loaded in milliseconds by every later start. Replicas may share it."""

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """Accepts ``"a,b"`` from the environment as well as a list."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value
