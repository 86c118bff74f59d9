"""The inference service: loads the configured models, warms them up, and serves them.

A model that cannot load (its package missing, its weights broken) is listed as FAILED with the
reason, and the others still serve; the service only fails to start when no model loads, or when
the settings themselves are wrong (an unknown model name, an unknown field in the models file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack

import grpc
import torch

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from services.common import cpu_idle, cpus, messaging
from services.common.boot import ConfigurationError
from services.common.errors import FailedPrecondition
from services.common.readiness import Readiness
from services.inference import background
from services.inference.batch_sizes import BUCKET as BATCH_SIZES_BUCKET
from services.inference.batch_sizes import KeptBatchSizes, measurement_key
from services.inference.batcher import DynamicBatcher
from services.inference.decoding import DecodeQueue
from services.inference.ensemble import ServedEnsemble
from services.inference.model_states import Desired, DesiredStates, open_bucket
from services.inference.models import hub, registry
from services.inference.models.config import ModelConfig, load_models_file, resolve_config, version_tables
from services.inference.models.contract import Answer, Item
from services.inference.repository import ModelRepository
from services.inference.runner import ModelRunner, resolve_device
from services.inference.served import FAILED, Served, ServedModel, Unserved
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings
from services.inference.tuning import tune_batch_size

log = logging.getLogger(__name__)

#: How long a starting inference waits for NATS (the kept load/unload state) before serving without it.
NATS_START_TIMEOUT_S = 10.0

SERVICE_NAME = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


def model_configs(settings: InferenceSettings, every_table: bool = False) -> list[ModelConfig]:
    """The settings of every version of every model to serve: the configured ones, their ensembles'
    members and the models they require; with ``every_table``, also every other model of the models
    file (known, so that an admin can load it at runtime).

    Each model's default version comes first, members and required models before the models that
    call them, so that ensembles load after their members; the other versions follow.

    Raises:
        ModelsFileError: The models file is unreadable or has an unknown field.
        ValueError: A configured model is neither an installed entry point nor in the file.
    """
    tables = load_models_file(settings.models_file)
    installed = registry.available()
    service_wide = settings.model_dump()
    explicit = frozenset(settings.model_fields_set)
    defaults: dict[str, ModelConfig] = {}
    others: list[ModelConfig] = []

    def add(name: str, wanted_by: str = "") -> None:
        if name in defaults:
            return
        if name not in tables and name not in installed:
            known = sorted(set(tables) | set(installed))
            where = f" (needed by {wanted_by!r})" if wanted_by else " in FERRY_INFERENCE_MODELS"
            raise ConfigurationError(
                f"unknown model {name!r}{where}; available: {', '.join(known)} (entry points of group "
                f"{registry.GROUP!r} and tables of {settings.models_file})"
            )
        first, *rest = (
            resolve_config(name, table, service_wide, explicit)
            for table in version_tables(name, tables.get(name, {})).values()
        )
        for member in (*first.members, *first.requires):
            add(member, name)
        defaults[name] = first
        others.extend(rest)

    for name, _ in map(split_version, settings.models):
        add(name)
    for name in tables if every_table else ():
        add(name)
    return [*defaults.values(), *others]


def split_version(entry: str) -> tuple[str, str]:
    """``"name:version"`` (an entry of FERRY_INFERENCE_MODELS, a CLI argument) as its two parts;
    a bare name has version ``""`` (the default)."""
    name, _, version = entry.partition(":")
    return name.strip(), version.strip()


class InferenceService:
    """FerryService for ``ferry.inference.v1.InferenceService``.

    Raises:
        ValueError: At construction, when settings name an unknown model or a bad field.
    """

    name = "inference"

    def __init__(self, settings: InferenceSettings) -> None:
        self._settings = settings
        self._configs = model_configs(settings, every_table=True)  # fail before binding a port
        self._starting = {c.name for c in model_configs(settings)}
        """What loads at start: FERRY_INFERENCE_MODELS and the models they need; the models file's
        other tables are known, UNLOADED, and an admin may load them."""
        self.models: dict[str, Served] = {}
        """Every configured model's default version by name: LOADING until start() has loaded it,
        then served, FAILED or UNLOADED (filled in by the repository)."""
        self.repository = ModelRepository(self._configs, self.models)
        """Loads and unloads them and their versions at runtime, each on a stack of its own."""
        self._kept_batch_sizes: KeptBatchSizes | None = None
        """Batch sizes measured by earlier starts (NATS KV), when FERRY_INFERENCE_NATS_URL is set."""
        self._job_decoder: DecodeQueue | None = None
        """Where batch jobs' inputs decode: threads at the lowest CPU priority (``idle_job_items``)."""
        self._job_cores = cpus.parse(settings.job_cpus)
        """The cores batch jobs' threads keep to (``job_cpus``); None: any."""

    def service_names(self) -> Sequence[str]:
        """The gRPC service this process serves."""
        return [SERVICE_NAME]

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the InferenceService servicer to ``server``."""
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.repository), server
        )

    async def start(self, stack: AsyncExitStack, readiness: Readiness) -> None:
        """Loads and warms up every configured model; returns once each serves or failed.

        Raises:
            RuntimeError: No model could be loaded.
        """
        settings = self._settings
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        # One torch thread per decode thread: the resize is per image, and an OpenMP team there
        # would spin on the cores the batches' forward passes are using.
        decoder = DecodeQueue(
            settings.decode_threads,
            settings.priority_aging_ms / 1000,
            initializer=lambda: torch.set_num_threads(1),
        )
        await decoder.start(stack)
        if settings.idle_job_items:  # batch jobs' inputs decode on threads of their own, idle
            self._job_decoder = DecodeQueue(
                settings.decode_threads,
                settings.priority_aging_ms / 1000,
                initializer=background.idle_initializer(
                    lambda: torch.set_num_threads(1), settings.job_cpu_idle, self._job_cores
                ),
            )
            await self._job_decoder.start(stack)
        hub.attach(asyncio.get_running_loop(), self.models)
        stack.callback(hub.detach)

        async def build(config: ModelConfig, own: AsyncExitStack) -> Served:
            return self._ensemble(config) if config.is_ensemble else await self._load(config, decoder, own)

        states = await self._kept_in_nats(stack)
        self.repository.attach(build, states)
        stack.push_async_callback(self.repository.close)
        desired = await states.read() if states else Desired()
        for name, version in desired.defaults.items():  # an admin moved them before this process started
            self.repository.prefer(name, version)
        named = {split_version(entry) for entry in settings.models}
        # Ensembles and notebooks last: they check their members' labels when those serve.
        for config in sorted(self._configs, key=lambda c: bool(c.members or c.requires)):
            if not readiness.accepting and any(isinstance(m, ServedModel) for m in self.models.values()):
                # A restart under load: the first model serves while the next ones load (tens of
                # seconds on a CPU), so a lone replica's callers wait seconds, not the whole start.
                # Overall health ("") stays NOT_SERVING until every model below has loaded.
                await readiness.open_calls()
            is_default = config.version == self.repository.default_version(config.name)
            kept = desired.loaded.get((config.name, config.version))
            with contextlib.suppress(FailedPrecondition):  # failed: listed FAILED with the reason
                starts = (is_default and config.name in self._starting) or (
                    config.name,
                    config.version,
                ) in named
                if kept or (kept is None and starts):
                    await self.repository.load(config.name, config.version)
                elif kept is False:  # an admin unloaded it before this process started
                    await self.repository.unload(config.name, config.version)
                else:  # another version or model of the file, not asked for yet
                    load = f"{config.name}:{config.version}" if not is_default else config.name
                    await self.repository.unload(
                        config.name, config.version, why=f"not loaded: `ferry models load {load}`"
                    )
        self.repository.started = True
        if states:
            await states.follow(stack)
        unserved = [m for m in self.models.values() if isinstance(m, Unserved)]
        # Models an admin unloaded are no failure: a process may start with all of them unloaded.
        if len(unserved) == len(self.models) and any(m.state == FAILED for m in unserved):
            reasons = "; ".join(
                f"{m.name}: {m.message}" for m in self.models.values() if isinstance(m, Unserved)
            )
            raise RuntimeError(f"no model could be loaded ({reasons})")
        # Only now: a process in the idle group from its start loads and warms up on what the
        # other processes leave, which on a busy machine is nothing for minutes.
        if cpu_idle.join_process(os.getpid(), settings.cpu_idle_once_loaded):
            log.info("models loaded: this process now runs in the cpu.idle cgroup (cpu_idle_once_loaded)")

    async def _kept_in_nats(self, stack: AsyncExitStack) -> DesiredStates | None:
        """Opens what inference keeps in NATS when FERRY_INFERENCE_NATS_URL is set: the loaded set
        (``model_states``, returned) and measured batch sizes (``batch_sizes``)."""
        settings = self._settings
        if not settings.nats_url:
            return None
        try:  # bounded: serving must not wait on NATS (an outage then costs only what is kept there)
            async with asyncio.timeout(NATS_START_TIMEOUT_S):
                _, js = await messaging.connect(settings.nats_url, "ferry-inference", stack)
                states = DesiredStates(await open_bucket(js, settings.nats_stream_replicas), self.repository)
                if settings.keep_batch_sizes:
                    self._kept_batch_sizes = await KeptBatchSizes.open(js, settings.nats_stream_replicas)
        except Exception as err:
            log.warning(
                "serving FERRY_INFERENCE_MODELS without the kept load/unload state and batch sizes: NATS: %r",
                err,
            )
            return None
        return states

    def _ensemble(self, config: ModelConfig) -> ServedEnsemble:
        ensemble = ServedEnsemble(config, self.models)
        log.info("serving ensemble %s of %s", config.name, ", ".join(config.members))
        return ensemble

    async def _load(self, config: ModelConfig, decoder: DecodeQueue, stack: AsyncExitStack) -> ServedModel:
        settings = self._settings
        model = registry.build(config)
        device = resolve_device(config.device or "auto")
        # Loading and warm-up block for seconds; in a thread, health checks still get answers.
        runner = await asyncio.to_thread(ModelRunner, model, device)
        warmup = config.warmup_batches if config.warmup_batches is not None else settings.warmup_batches
        if model.example() is None:
            warmup = (
                0  # nothing to warm up with (a notebook's predict is never called with a made-up payload)
            )
        # Read on the loop's thread: torch's count is per thread, and a worker thread starts from
        # whatever count was last set anywhere (a batch of another model sets its share).
        threads = torch.get_num_threads()
        batch_size, source = config.max_batch_size, "configured"
        if not model.batchable:
            batch_size = 1
        elif batch_size is None:
            measured = await self._measured_batch_size(config, runner, device, warmup, threads)
            batch_size, source = measured, "measured"
        await asyncio.to_thread(runner.warm_up, warmup, batch_size)

        def new_batcher(initializer: Callable[[], object] | None = None) -> DynamicBatcher[Item, Answer]:
            return DynamicBatcher(
                config.name,
                runner.run,
                batch_size,
                max_delay_s=(config.max_batch_delay_ms or 0.0) / 1000,
                max_queue=config.max_queue or settings.max_queue,
                aging_s=settings.priority_aging_ms / 1000,
                instances=config.instances,
                # Every model sets its count in its own batch threads, instances or not: a thread
                # that first runs torch later starts from the count last set anywhere in the process.
                share_threads=intra_op_share(threads),
                initializer=initializer,
            )

        batcher = new_batcher()
        await batcher.start(stack)
        jobs: tuple[DynamicBatcher[Item, Answer], DecodeQueue] | None = None
        if self._job_decoder is not None:  # batch jobs' inputs: a batcher of their own, idle
            lower = background.lowering(self._settings.job_cpu_idle, self._job_cores)
            jobs = (new_batcher(lower), self._job_decoder)
            await jobs[0].start(stack)
        log.info(
            "serving %s v%s on %s (batch size %d %s, queue bound %d, instances %d, torch threads %d "
            "shared by the batches running, "
            "decode threads %d)",
            config.name,
            config.version,
            device,
            batcher.max_batch_size,
            source,
            batcher.max_queue,
            config.instances,
            torch.get_num_threads(),
            settings.decode_threads,
        )
        return ServedModel(runner, batcher, decoder, settings.max_image_pixels, source, jobs)

    async def _measured_batch_size(
        self, config: ModelConfig, runner: ModelRunner, device: torch.device, warmup: int, threads: int
    ) -> int:
        """The batch size timing chooses on this device: kept from an earlier start on the same kind
        of device (``batch_sizes``), else measured now (and kept)."""
        settings = self._settings
        budget_s = settings.batch_latency_budget_ms / 1000
        kept_sizes = self._kept_batch_sizes
        key = measurement_key(config, device, settings.batch_size_search_max, budget_s)
        kept = await kept_sizes.get(key) if kept_sizes else None
        if kept is not None:
            log.info(
                "%s: batch size %d as measured by an earlier start on this kind of device (kept in NATS "
                "KV %s, key %s; FERRY_INFERENCE_KEEP_BATCH_SIZES=false measures at every start)",
                config.name,
                kept,
                BATCH_SIZES_BUCKET,
                key,
            )
            return kept
        # Warm first: the first passes of a fresh model pay one-off set-up costs.
        await asyncio.to_thread(runner.warm_up, warmup, 1)
        size = await asyncio.to_thread(
            time_and_choose, config, runner, threads, settings.batch_size_search_max, budget_s
        )
        if kept_sizes:
            await kept_sizes.put(key, size)
        return size


def time_and_choose(
    config: ModelConfig, runner: ModelRunner, threads: int, largest: int, budget_s: float
) -> int:
    """``config``'s batch size, timed as it serves under load: its instances' passes side by side,
    each with the share of ``threads`` that ``intra_op_share`` gives it when all of them run; on a
    CPU ranked by the CPU time they cost (``tuning``)."""
    share = max(1, threads // config.instances)
    by_cpu = runner.device.type == "cpu"
    with runner.side_by_side(config.instances, share) as time_batch:
        return tune_batch_size(config.name, time_batch, largest, budget_s, config.instances, by_cpu)


def intra_op_share(threads: int) -> Callable[[int], None]:
    """Gives each running batch of a model an equal share of ``threads`` intra-op threads.

    torch's thread count is per calling thread (OpenMP's), so each instance's thread sets its
    own before each batch: a batch that runs alone gets them all (the lowest latency), two that
    run at once get half each. On 2 cores two one-thread passes side by side served 69-74
    images/s against 46-50 for one two-thread pass at a time (docs/inference.md, *Threads*): no
    OpenMP team waits for a partner, and one pass runs while the other's thread hands back.
    """

    def share(running: int) -> None:
        torch.set_num_threads(max(1, threads // running))

    return share
