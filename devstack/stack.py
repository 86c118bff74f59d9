"""Supervises the whole local stack as real processes: ``ferry up``.

Order: Postgres and NATS, then the four services (started together, each waited on through gRPC
health), then Envoy. While it runs, a process that exits is started again (``devstack.supervisor``),
so one crash costs a few seconds of that part, never the stack. Ctrl-C (or SIGTERM) stops them in
reverse so in-flight work drains: Envoy first, store last, so records published during shutdown
still reach Postgres. A service's processes stop together, and skip their shutdown delay: whatever
calls them has stopped before them.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial

from devstack import models
from devstack.envoy import UPLOAD_LANE, EnvoyOptions, render
from devstack.health import envoy_ready
from devstack.infra import (
    ManagedProcess,
    NatsCluster,
    Postgres,
    free_port,
    nats_command,
    nats_environment,
    port_open,
    prepare_streams,
    venv_binary,
)
from devstack.replicas import JOB_LANE, inference_replicas
from devstack.settings import StackSettings
from devstack.supervisor import Program, Supervisor
from devstack.traces import TRACES_FILE, TraceReceiver
from services.common.probe import is_serving
from services.gateway.settings import GatewaySettings
from services.jobs.settings import QUEUE_ROLE, RUNNER_ROLE

#: Service name -> (default gRPC port, default metrics port). Matches each service's settings.
SERVICE_PORTS: dict[str, tuple[int, int]] = {
    "gateway": (50051, 9101),
    "inference": (50052, 9102),
    "store": (50053, 9103),
    "jobs": (50054, 9104),
}
START_ORDER = ("store", "inference", "jobs", "gateway")
ENDPOINTS_FILE = "endpoints.json"
#: SHUTDOWN_DELAY_S of a service running as several processes: Envoy's health checks (2 s apart,
#: 2 failures: devstack/envoy.py) take up to 4 s to take a leaving gateway out.
REPLICA_SHUTDOWN_DELAY_S = 5.0
#: The upload lane's niceness (``upload_gateways``): its CPU comes after every other process's.
UPLOAD_NICENESS = 10
#: The job queue's API's processes (``job_queues``), apart from the jobs runners.
JOB_QUEUE = "jobs-queue"
PROMETHEUS_FILE = "prometheus.yml"
READY_LINE = "started:"
"""What services.common.runtime logs once a service serves: tells a replacement apart."""


@dataclass
class Endpoints:
    """Where the running stack can be reached; also written to ``<state_dir>/endpoints.json``."""

    http_url: str
    grpc_target: str
    envoy_admin_url: str
    nats_url: str
    database_url: str
    dev_api_key: str
    logs_dir: str
    services: dict[str, dict[str, int]] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    """The pids at start; processes restart, so ``status.json`` has the current ones."""
    otlp_endpoint: str = ""
    """Where every process exports its spans; empty: nowhere."""
    traces_file: str = ""
    """``ferry up --trace``: the file the local receiver appends spans to; empty otherwise."""
    prometheus_config: str = ""
    models: list[str] = field(default_factory=list)
    """The models inference serves."""
    models_origin: str = ""
    """Why those: FERRY_INFERENCE_MODELS, or every model of the models file."""
    """A Prometheus scrape config for this run's ports."""


class LocalStack:
    """Starts and stops every process of the local stack."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.logs_dir = self.state_dir / "logs"
        self.supervisor = Supervisor(self.state_dir, settings.start_timeout_s)
        self.receiver: TraceReceiver | None = None
        self.models, self.models_origin = models.served_models()
        # Ports handed out so far, the public one first: it is not bound until Envoy starts, so the
        # OS may offer it again, and a metrics server (SO_REUSEPORT, as Envoy's listener) would
        # then quietly share it and answer some of its requests (seen once in CI).
        self._taken = {settings.http_port}

    def _otlp_endpoint(self) -> str:
        """The user's collector, else (``--trace``) a receiver of our own, else none."""
        s = self.settings
        if s.otlp_endpoint or not s.trace:
            if s.trace:
                print(f"--trace: spans go to FERRY_OTLP_ENDPOINT={s.otlp_endpoint}, not to `ferry trace`")
            return s.otlp_endpoint
        self.receiver = TraceReceiver(self._free_port(), s.host, self.state_dir / TRACES_FILE)
        self.receiver.start()
        return self.receiver.endpoint

    def _port(self, default: int) -> int:
        return self._free_port() if self.settings.free_ports else default

    def _free_port(self) -> int:
        """A port free a moment ago that this stack has not handed out already."""
        while (port := free_port(self.settings.host)) in self._taken:
            pass
        self._taken.add(port)
        return port

    def _dev_api_key(self) -> str:
        if self.settings.dev_api_key:
            return self.settings.dev_api_key
        key_file = self.state_dir / "dev-api-key"
        if not key_file.exists():
            key_file.write_text(f"ferry-dev-{secrets.token_urlsafe(24)}\n")
            key_file.chmod(0o600)
        return key_file.read_text().strip()

    def _check_ports_free(self) -> None:
        """Refuses to start on ports something already listens on (another ``ferry up``, say).

        The services bind with SO_REUSEPORT, so without this check a second stack's gateway would
        quietly share a port, and its traffic, with the first one's.

        Raises:
            RuntimeError: names each busy port and what to do.
        """
        s = self.settings
        wanted = {"http": s.http_port}  # chosen by the user even when the others are picked free
        if not s.free_ports:
            wanted |= {"envoy admin": s.envoy_admin_port, "nats": s.nats_port}
            for name, (grpc_port, metrics_port) in SERVICE_PORTS.items():
                wanted |= {f"{name} gRPC": grpc_port, f"{name} metrics": metrics_port}
        busy = [f"{what} {port}" for what, port in wanted.items() if port_open(s.host, port)]
        if busy:
            raise RuntimeError(
                f"ports already in use on {s.host}: {', '.join(busy)}. Is another `ferry up` running "
                "(`ferry status` in its folder says)? Stop it, or start this one with "
                "FERRY_FREE_PORTS=true (and FERRY_HTTP_PORT for the public port)."
            )

    def start(self) -> Endpoints:
        """Starts everything and returns once every part reports ready."""
        s = self.settings
        try:  # before anything starts: a device list that names no device stops here
            replicas = {r.name: r for r in inference_replicas(s.inference_devices, s.inference_instances)}
        except ValueError as err:
            raise RuntimeError(str(err)) from None
        self._check_ports_free()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        api_key = self._dev_api_key()
        supervisor = self.supervisor
        supervisor.begin()
        otlp = self._otlp_endpoint()

        pg_dir = self.state_dir / "postgres"
        # Alive is all "serving" means for Postgres; store's readiness tells whether it answers.
        postgres = supervisor.start(
            Program("postgres", partial(Postgres, pg_dir), lambda: True, pg_dir / "log")
        )
        nats_url = self._start_nats()

        # Processes of each service: inference may run as several replicas (devstack.replicas),
        # the others as many as their count; the first of each on the service's ports, the
        # others on free ones.
        counts = {"gateway": s.gateways, "store": s.stores, "jobs": s.runners}
        processes = {name: process_names(name, counts.get(name, 1)) for name in SERVICE_PORTS}
        processes["inference"] = list(replicas)
        lane = process_names(UPLOAD_LANE, s.upload_gateways) if s.upload_gateways else []
        processes["gateway"] += lane
        # The job lane: inference processes only the jobs runner calls (its own target below).
        job_lane = process_names(JOB_LANE, s.inference_job_lane) if s.inference_job_lane else []
        processes["inference"] += job_lane
        # The job queue's API apart from the runners: the gateways call these (first: on the
        # service's ports), not the runners.
        queues = process_names(JOB_QUEUE, s.job_queues) if s.job_queues else []
        processes["jobs"] = queues + processes["jobs"]
        lanes = set(lane) | set(job_lane)
        ports: dict[str, tuple[int, int]] = {}
        for service, (grpc_default, metrics_default) in SERVICE_PORTS.items():
            for i, name in enumerate(processes[service]):
                first = (self._port(grpc_default), self._port(metrics_default))
                ports[name] = first if i == 0 else (self._free_port(), self._free_port())
        own = {name: f"{s.host}:{grpc}" for name, (grpc, _) in ports.items()}
        # Each service's processes, comma-separated (what its callers balance over); a process's
        # own target is kept apart: "gateway" is also the first gateway's name.
        targets = own | {
            service: ",".join(own[name] for name in names if name not in job_lane)
            for service, names in processes.items()
        }
        targets[JOB_LANE] = ",".join(own[name] for name in job_lane) or targets["inference"]
        if queues:
            targets["jobs"] = ",".join(own[name] for name in queues)
        extra = service_fields(targets, nats_url, s.stream_replicas, postgres.uri, api_key, s.results_url)
        for service in START_ORDER:
            for name in processes[service]:
                grpc_port, metrics_port = ports[name]
                fields = {
                    "GRPC_HOST": s.host,
                    "GRPC_PORT": str(grpc_port),
                    "METRICS_PORT": str(metrics_port),
                    "OTLP_ENDPOINT": otlp,
                    **extra[service],
                }
                if queues and service == "jobs":
                    fields["ROLES"] = QUEUE_ROLE if name in queues else RUNNER_ROLE
                # What the service's callers balance over (the runners have none beside the queue).
                balanced = set(queues) if service == "jobs" and queues else set(processes[service]) - lanes
                if name in balanced and len(balanced) > 1:
                    # Stopped alone, a replica must leave its balancers before refusing calls.
                    fields["SHUTDOWN_DELAY_S"] = str(REPLICA_SHUTDOWN_DELAY_S)
                if name in lane:  # bulk bytes only: not a share of each key's rate limit
                    fields["SHARES_RATE_LIMITS"] = "false"
                    fields["TIME_SLICE_US"] = "0"  # its checks are throughput, not latency
                env = {f"FERRY_{service.upper()}_{key}": value for key, value in fields.items()}
                env |= replicas[name].env if name in replicas else {}
                if name in job_lane:
                    # On the first replica's device (and its torch threads); into the idle group
                    # only once it serves, by itself (starting there, it starves on a busy machine).
                    env |= next(iter(replicas.values())).env
                    env["FERRY_INFERENCE_CPU_IDLE_ONCE_LOADED"] = s.inference_job_lane_cpu_idle
                if service == "inference":
                    env[models.VARIABLE] = ",".join(self.models)
                env["PYTHONUNBUFFERED"] = "1"
                argv = [sys.executable, "-m", f"services.{service}"]
                # The callers' gateways come first, beside Envoy; the lanes' CPU after every other
                # process's; inference's as the setting says.
                niceness = s.gateway_niceness if service == "gateway" else 0
                niceness = UPLOAD_NICENESS if name in lane else niceness
                niceness = s.inference_niceness if service == "inference" else niceness
                niceness = s.inference_job_lane_niceness if name in job_lane else niceness
                idle = s.gateway_uploads_cpu_idle if name in lane else "off"
                idle = s.jobs_runner_cpu_idle if service == "jobs" and name not in queues else idle
                program = Program(
                    name,
                    partial(ManagedProcess.start, name, argv, self.logs_dir, env, niceness, idle),
                    partial(is_serving, own[name], timeout_s=1.0),
                    self.logs_dir / f"{name}.log",
                    surge=True,
                    ready_line=READY_LINE,
                    group=service,
                )
                supervisor.start(program)
        for service in START_ORDER:
            for name in processes[service]:
                supervisor.wait_serving(name, s.start_timeout_s)

        admin_port = self._port(s.envoy_admin_port)
        admin_url = f"http://{s.host}:{admin_port}"
        gateway_ports = tuple(ports[name][0] for name in processes["gateway"] if name not in lane)
        upload_ports = tuple(ports[name][0] for name in lane)
        supervisor.start(self._envoy(gateway_ports, upload_ports, admin_port, admin_url, otlp))
        supervisor.wait_serving("envoy", s.start_timeout_s)

        endpoints = Endpoints(
            http_url=f"http://{s.host}:{s.http_port}",
            grpc_target=f"{s.host}:{s.http_port}",
            envoy_admin_url=admin_url,
            nats_url=nats_url,
            database_url=postgres.uri,
            dev_api_key=api_key,
            logs_dir=str(self.logs_dir),
            services={n: {"grpc_port": g, "metrics_port": m} for n, (g, m) in ports.items()},
            pids=supervisor.pids(),
            otlp_endpoint=otlp,
            traces_file=str(self.state_dir / TRACES_FILE) if self.receiver is not None else "",
            prometheus_config=str(self.state_dir / PROMETHEUS_FILE),
            models=self.models,
            models_origin=self.models_origin,
        )
        metrics_ports = {service: [ports[name][1] for name in names] for service, names in processes.items()}
        (self.state_dir / PROMETHEUS_FILE).write_text(
            scrape_config(s.host, metrics_ports, f"{s.host}:{admin_port}")
        )
        # status.json lists every process before endpoints.json says the stack is up.
        supervisor.write_status()
        (self.state_dir / ENDPOINTS_FILE).write_text(json.dumps(asdict(endpoints), indent=2))
        return endpoints

    def _start_nats(self) -> str:
        """Starts nats-server, or a cluster of ``nats_nodes`` on loopback; returns the client URL.

        A cluster's streams are created here with their replicas once JetStream has elected its
        leader (a few seconds), so no service races that election at start.
        """
        s = self.settings
        supervisor = self.supervisor
        cluster = None
        names = ["nats"]
        if s.nats_nodes > 1:
            cluster = NatsCluster("ferry", tuple(self._free_port() for _ in range(s.nats_nodes)))
            names = [f"nats-{node}" for node in range(s.nats_nodes)]
        ports = [self._port(s.nats_port)] + [self._free_port() for _ in names[1:]]
        env = nats_environment(s.nats_memory_limit)
        for node, (name, port) in enumerate(zip(names, ports, strict=True)):
            argv = nats_command(port, self.state_dir / name, s.host, cluster, node)
            supervisor.start(
                Program(
                    name,
                    partial(ManagedProcess.start, name, argv, self.logs_dir, env),
                    partial(port_open, s.host, port),
                    self.logs_dir / f"{name}.log",
                    group="nats",
                )
            )
        for name in names:
            supervisor.wait_serving(name, 20)
        url = ",".join(f"nats://{s.host}:{port}" for port in ports)
        if cluster is not None:
            prepare_streams(url, s.stream_replicas, s.start_timeout_s)
        return url

    def _envoy(
        self,
        gateway_ports: tuple[int, ...],
        upload_ports: tuple[int, ...],
        admin_port: int,
        admin_url: str,
        otlp: str,
    ) -> Program[ManagedProcess]:
        s = self.settings
        config = self.state_dir / "envoy" / "envoy.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        opts = EnvoyOptions(
            listen_host=s.host,
            listen_port=s.http_port,
            admin_host=s.host,
            admin_port=admin_port,
            gateway_host=s.host,
            gateway_port=gateway_ports[0],
            more_gateway_ports=gateway_ports[1:],
            upload_gateway_ports=upload_ports,
            # The gateways read the same environment: Envoy's bound follows theirs.
            gateway_max_inflight=GatewaySettings().max_inflight,
            oip_lane_bytes=GatewaySettings().oip_rest_off_loop_bytes,
            otlp_endpoint=otlp,
            refusals_per_s=s.envoy_refusals_per_s,
            refusal_hold_ms=s.envoy_refusal_hold_ms,
            max_held=s.envoy_max_held,
        )
        config.write_text(render(opts))
        argv = [
            venv_binary("envoy"),
            "-c",
            str(config),
            "--use-dynamic-base-id",  # several stacks (a dev one and the tests') can run side by side
            "--log-level",
            "warn",
        ]
        return Program(
            "envoy",
            partial(
                ManagedProcess.start,
                "envoy",
                argv,
                self.logs_dir,
                niceness=s.envoy_niceness,
                slice_us=s.envoy_time_slice_us,
            ),
            partial(envoy_ready, admin_url),
            self.logs_dir / "envoy.log",
        )

    def stop(self) -> None:
        """Stops every process in reverse start order (Postgres last); state stays on disk."""
        self.supervisor.stop()
        if self.receiver is not None:  # after the processes, so their last spans still arrive
            self.receiver.stop()
        (self.state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)


def process_names(service: str, count: int) -> list[str]:
    """Supervised names of ``count`` processes of ``service``: ``gateway``, or ``gateway-0``, ..."""
    return [service] if count == 1 else [f"{service}-{i}" for i in range(count)]


def service_fields(
    targets: dict[str, str],
    nats_url: str,
    stream_replicas: int,
    database_url: str,
    api_key: str,
    results_url: str = "",
) -> dict[str, dict[str, str]]:
    """The settings ``ferry up`` gives each service besides its ports, as ``FERRY_<SERVICE>_<KEY>``
    keys (tests/devstack checks every key against the service's settings class).

    Args:
        targets: each service's gRPC target, its processes comma-separated; ``JOB_LANE``: the job
            lane's processes (absent or inference's when it has none).
        nats_url: NATS, a cluster's nodes comma-separated.
        stream_replicas: copies of each stream.
        database_url: Postgres.
        api_key: the development key store makes sure exists.
        results_url: the result store, one for the jobs service that writes result files and
            the gateways that read them.
    """
    nats = {"NATS_URL": nats_url, "NATS_STREAM_REPLICAS": str(stream_replicas)}
    return {
        "gateway": {
            "INFERENCE_TARGET": targets["inference"],
            "STORE_TARGET": targets["store"],
            "JOBS_TARGET": targets["jobs"],  # the job queue's processes (every runner without them)
            "RESULTS_URL": results_url,
            **nats,
        },
        "inference": dict(nats),  # where the models loaded at runtime are kept
        "store": {"DATABASE_URL": database_url, "DEV_API_KEY": api_key, **nats},
        # The runner calls the job lane when there is one (``targets[JOB_LANE]`` is inference's
        # otherwise), so a job's model compute never shares the callers' inference processes.
        "jobs": {
            "INFERENCE_TARGET": targets.get(JOB_LANE, targets["inference"]),
            "STORE_TARGET": targets["store"],
            "RESULTS_URL": results_url,
            **nats,
        },
    }


def scrape_config(host: str, metrics_ports: dict[str, list[int]], envoy_admin: str) -> str:
    """``<state_dir>/prometheus.yml``: scrapes each service as job ``ferry-<service>``.

    The job names are the ones ``deploy/prometheus/rules.yml`` and the dashboards expect; a
    service's replicas are targets of its one job.
    """
    jobs = "".join(
        f"  - job_name: ferry-{name}\n    static_configs: [{{targets: [{targets}]}}]\n"
        for name, ports in metrics_ports.items()
        for targets in [", ".join(f'"{host}:{port}"' for port in ports)]
    )
    return (
        "# Written by `ferry up` for this run's ports: prometheus --config.file=<this file>\n"
        "global:\n  scrape_interval: 5s\n\nscrape_configs:\n"
        f"{jobs}"
        "  - job_name: ferry-envoy\n    metrics_path: /stats/prometheus\n"
        f'    static_configs: [{{targets: ["{envoy_admin}"]}}]\n'
    )


def _grpcurl() -> str:
    """grpcurl as the user can run it: the venv's binary (the venv's bin/ is rarely on PATH)."""
    try:
        return os.path.relpath(venv_binary("grpcurl"))
    except FileNotFoundError:
        return "grpcurl"


def _traces_line(endpoints: Endpoints) -> str:
    if endpoints.traces_file:
        return f"{endpoints.traces_file}   (`ferry trace` lists them, `ferry trace ID` draws one)"
    if endpoints.otlp_endpoint:
        return f"exported to {endpoints.otlp_endpoint}"
    return "off (`ferry up --trace` keeps them locally for `ferry trace`)"


def banner(endpoints: Endpoints, seconds: float) -> str:
    """The text ``ferry up`` prints once the stack is ready."""
    metrics = ", ".join(f"{n} :{p['metrics_port']}" for n, p in endpoints.services.items())
    return f"""
Ferry is up (ready in {seconds:.1f} s).
  REST + gRPC   {endpoints.http_url}   (Envoy: REST/JSON and native gRPC on one port)
  dev API key   {endpoints.dev_api_key}
  models        {", ".join(endpoints.models)}   ({endpoints.models_origin})
  Envoy admin   {endpoints.envoy_admin_url}
  NATS          {endpoints.nats_url}
  Postgres      {endpoints.database_url}
  metrics       {metrics}   (`ferry metrics` sums them up)
  Prometheus    {endpoints.prometheus_config}   (a scrape config for these ports)
  traces        {_traces_line(endpoints)}
  logs          {endpoints.logs_dir}

Try it:
  export FERRY_API_KEY={endpoints.dev_api_key}
  curl -s -H "authorization: Bearer $FERRY_API_KEY" {endpoints.http_url}/v1/models
  {_grpcurl()} -plaintext {endpoints.grpc_target} list

A process that exits is restarted; `ferry status` shows them all, `ferry restart NAME` replaces one.
Press Ctrl-C to stop; data stays in the state folder for the next start.
"""


def run(settings: StackSettings | None = None) -> int:
    """Runs the stack in the foreground until Ctrl-C or SIGTERM (0) or a crash loop (1)."""
    stack = LocalStack(settings or StackSettings())
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    started = time.monotonic()
    print(f"starting Ferry (state in {stack.state_dir}) ...", flush=True)
    code = 0
    try:
        endpoints = stack.start()
        print(banner(endpoints, time.monotonic() - started), flush=True)
        code = stack.supervisor.run(stopping)
    except (RuntimeError, TimeoutError, FileNotFoundError) as err:
        print(f"\nFerry failed to start: {err}", file=sys.stderr)
        code = 1
    finally:
        print("stopping Ferry ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return code
