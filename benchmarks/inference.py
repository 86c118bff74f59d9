"""Inference benchmarks of issue 7, each one command printing its ratios measured in one run.

``python -m benchmarks.inference <benchmark>``:

* ``overhead`` (P1): single-request REST latency through Envoy minus the same model and
  preprocessing in-process (p50; target <= 3 ms, stretch 1.5 ms); its rows are interleaved per
  request and each hop is a paired difference (``benchmarks.hops``).
* ``throughput`` (P2): Ferry gRPC through Envoy at 16 and 64 concurrent clients / the raw model's
  best batched in-process throughput (forward passes at batch 1, 2, 4 and 8, traced and eager,
  in this process; target >= 0.85, issue 18).
* ``batching`` (P3): the same at 64 clients with dynamic batching on (the service's chosen batch
  size) and off (``FERRY_INFERENCE_MAX_BATCH_SIZE=1``), two stacks in turn (target >= 1.3x on a CPU).
* ``peers`` (P4, ``make bench-peers``): at 16 clients, Ferry's Open Inference Protocol over gRPC
  through Envoy vs MLServer 1.7 serving the same weights with a custom runtime (adaptive batching,
  its gRPC port), and Ferry's REST predict vs a seed-style FastAPI endpoint (one image per request).
  Targets: throughput >= 1.2x and p99 <= 0.7x vs MLServer; throughput >= 1.3x vs FastAPI.
* ``service``: the inference service alone over gRPC (no Envoy, gateway or records) vs the raw model.
* ``graph``: the inference service alone at N clients with the image model traced (``torchscript``,
  the default), compiled by AOTInductor (``aoti``) and eager, in turn: what each graph is worth once
  gRPC and decoding share the process.

Every other row uses the same load client (``benchmarks.e2e.measure``: N threads, closed loop, one
451x300 JPEG per request, a fixed number of requests), and every server runs alone in its turn on
the same machine: a whole local stack (``ferry up`` on free ports in a temporary folder) for Ferry.
Ferry's rows include what Ferry does and the peers do not: API-key checks, Envoy, and recording
every prediction in Postgres through JetStream. Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import grpc
import torch
from google.rpc import error_details_pb2, status_pb2

from benchmarks import hops, raw
from benchmarks.cpu import cpu_seconds, own_cpu_seconds, per_request_ms
from benchmarks.e2e import MODEL, Result, cat_jpeg, measure, rest_call
from devstack.infra import free_port
from devstack.settings import StackSettings
from devstack.stack import Endpoints, LocalStack
from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from ferry.types.v1 import types_pb2
from ferry_client import FerryClient, FerryError
from services.common.probe import is_serving
from services.inference.models.config import Graph

START_DEADLINE_S = 180
GRAPHS: tuple[Graph, ...] = ("torchscript", "eager")
"""The graphs the raw model's best is taken over (issue 18: whichever is faster)."""
API_KEY = "bench"


def machine() -> str:
    """The CPU, cores, torch threads and the load average now (other processes share the cores)."""
    cpu = platform.processor() or "cpu"
    try:
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, {device}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load}"
    )


@contextmanager
def environment(settings: dict[str, str]) -> Iterator[None]:
    """Sets environment variables (inherited by a stack's services) for the block's duration."""
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


STACK_SETTINGS: dict[str, str] = {}
"""``--setting`` values: environment variables of every Ferry stack the benchmark starts."""


@contextmanager
def ferry_stack(settings: dict[str, str] | None = None) -> Iterator[Endpoints]:
    """A whole local stack on free ports in a temporary folder; ``settings`` go to its services."""
    folder = tempfile.TemporaryDirectory(prefix="ferry-bench-")
    with environment(STACK_SETTINGS | (settings or {})), folder as state:
        stack = LocalStack(
            StackSettings(state_dir=Path(state), http_port=free_port(), free_ports=True, dev_api_key=API_KEY)
        )
        try:
            yield stack.start()
        finally:
            stack.stop()


class FollowsRetryAdvice:
    """Wraps a call: a refusal (RESOURCE_EXHAUSTED, REST 429) is retried after the advised delay.

    What a well-behaved client does with Ferry's load shedding (the gateway refuses predictions
    beyond what it can answer in time, with a RetryInfo); its latency includes the waits. The
    peers never refuse, so for them this changes nothing.
    """

    FALLBACK_S = 0.1

    def __init__(self, call: Callable[[], object]) -> None:
        self._call = call
        self._lock = threading.Lock()
        self.refused = 0

    def __call__(self) -> object:
        while True:
            try:
                return self._call()
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                    raise
                delay = self._grpc_advice(err)
            except urllib.error.HTTPError as err:
                if err.code != 429:
                    raise
                delay = self._rest_advice(err.read())
            except FerryError as err:  # the Python client's own error
                if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                delay = err.retry_after_s or self.FALLBACK_S
            with self._lock:
                self.refused += 1
            time.sleep(delay)

    @classmethod
    def _grpc_advice(cls, err: grpc.RpcError) -> float:
        for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return info.retry_delay.ToTimedelta().total_seconds()
        return cls.FALLBACK_S

    @classmethod
    def _rest_advice(cls, body: bytes) -> float:
        try:
            details = json.loads(body).get("details", [])
            delay = next(d["retry_delay"] for d in details if "retry_delay" in d)
            return float(str(delay).rstrip("s"))
        except (ValueError, StopIteration, KeyError, AttributeError, TypeError):
            return cls.FALLBACK_S


def loaded(
    name: str,
    call: Callable[[], object],
    requests: int,
    clients: int,
    servers: Mapping[str, int] | None = None,
) -> Result:
    """``measure`` with a client that follows the retry advice; the name says how often it was refused.

    Args:
        servers: the processes serving the row by name: their CPU per request is printed.
    """
    polite = FollowsRetryAdvice(call)
    before = {**cpu_seconds(servers or {}), "load client": own_cpu_seconds()}
    result = measure(name, polite, requests, clients)
    if servers:
        after = {**cpu_seconds(servers), "load client": own_cpu_seconds()}
        print(f"  {name}: CPU ms per request: {per_request_ms(before, after, requests + 3)}", flush=True)
    if polite.refused:
        result.name = f"{name} ({polite.refused} x 429)"
    return result


def raw_batch1(image: bytes, requests: int) -> Result:
    """The model in-process, batch 1, sequential, decoding and preprocessing included (P1's floor)."""
    runner = raw.load(MODEL)
    runner.warm_up(batches=2, batch_size=1)
    return measure(
        "raw model in-process, batch 1", lambda: runner.run([raw.item(runner, image)]), requests, 1
    )


def raw_best(
    image: bytes, requests: int, sizes: tuple[int, ...] = (1, 2, 4, 8), graphs: tuple[Graph, ...] = GRAPHS
) -> Result:
    """The raw model's best throughput over batch sizes and graphs: the ceiling a batching server
    aims for (issue 18: the traced graph or the eager module, whichever is faster).

    Forward passes only (the image is preprocessed once), sequential, in this process.
    """
    results: list[Result] = []
    for graph in graphs:
        runner = raw.load(MODEL, graph)
        item = raw.item(runner, image)
        for size in sizes:
            runner.warm_up(batches=2, batch_size=size)
            run = partial(runner.run, [item] * size)
            timed = measure("", run, max(3, requests // size), clients=1)
            name = f"raw forward only, best batch ({size}, {graph})"
            results.append(Result(name, timed.images_per_s * size, timed.p50_ms, timed.p99_ms))
    return max(results, key=lambda r: r.images_per_s)


def oip_call(target: str, image: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> Callable[[], object]:
    """One ModelInfer of one image (BYTES ``IMAGE``, top 5) on an OIP server: Ferry or MLServer."""
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    request = oip.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            oip.ModelInferRequest.InferInputTensor(
                name="IMAGE",
                datatype="BYTES",
                shape=[1],
                contents=oip.InferTensorContents(bytes_contents=[image]),
            )
        ],
        parameters={"top_k": oip.InferParameter(int64_param=5)},
    )

    def call() -> object:
        return stub.ModelInfer(request, metadata=metadata, timeout=120)

    return call


def table(title: str, results: list[Result], base: Result | None = None) -> None:
    """Prints rows of results (and each row's ratio to ``base``)."""
    print(f"\n{title}\n{'setup':<46} {'img/s':>7} {'p50 ms':>8} {'p99 ms':>8}" + (" ratio" if base else ""))
    for r in results:
        ratio = f" {r.images_per_s / base.images_per_s:>5.2f}x" if base else ""
        print(f"{r.name:<46} {r.images_per_s:>7.1f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f}{ratio}")


def verdict(name: str, value: float, target: str, met: bool) -> None:
    print(f"{name}: {value:.2f} (target {target}): {'met' if met else 'NOT met'}")


def overhead(image: bytes, requests: int) -> None:
    """P1: REST through Envoy, one client, vs the same work in-process; and where the time goes.

    The same request, one client, enters the stack one hop further out each row: inference's own
    port, the gateway's (auth, admission, the inference hop, the awaited record), Envoy's gRPC
    (passed through), Envoy's REST (JSON transcoded). The rows are measured round-robin, one
    request each per round (``benchmarks.hops``), so each hop's cost is a paired difference.
    """
    runner = raw.load(MODEL)
    runner.warm_up(batches=2, batch_size=1)

    def in_process() -> hops.Stages:
        started = time.perf_counter()
        item = raw.item(runner, image)
        decoded = time.perf_counter()
        runner.run([item])
        done = time.perf_counter()
        return {"decode": (decoded - started) * 1000, "forward": (done - decoded) * 1000}

    with ferry_stack() as endpoints:
        inference = inference_call(f"127.0.0.1:{endpoints.services['inference']['grpc_port']}", image)
        gateway = f"127.0.0.1:{endpoints.services['gateway']['grpc_port']}"
        with (
            FerryClient(gateway, API_KEY, timeout_s=60) as direct,
            FerryClient(endpoints.grpc_target, API_KEY, timeout_s=60) as edge,
        ):
            rows = [
                hops.Row("raw model in-process, batch 1", in_process),
                hops.Row(
                    "Ferry inference gRPC (no edge)",
                    lambda: hops.answer_stages(inference().results[0].timing),
                ),
                hops.Row("Ferry gateway gRPC", lambda: hops.answer_stages(direct.predict(image).timing)),
                hops.Row("Ferry gRPC via Envoy", lambda: hops.answer_stages(edge.predict(image).timing)),
                hops.Row(
                    "Ferry REST via Envoy, 1 client",
                    hops.rest_predict(endpoints.http_url, API_KEY, image, MODEL),
                ),
            ]
            print(f"P1: {requests} rounds of one request per row, interleaved", flush=True)
            hops.interleave(rows, requests)
    extra = hops.report(rows)
    verdict("P1 p50 overhead ms (REST via Envoy - raw)", extra, "<= 3 ms, stretch 1.5 ms", extra <= 3.0)


def inference_call(target: str, image: bytes) -> Callable[[], inference_service_pb2.PredictResponse]:
    """One Predict of one image on an inference service's port (no Envoy, gateway or record)."""
    channel = grpc.insecure_channel(target)
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    request = inference_service_pb2.PredictRequest(
        model=MODEL, inputs=[types_pb2.Input(image=types_pb2.Image(content=image))], top_k=5
    )
    return lambda: stub.Predict(request, timeout=60)


def grpc_rows(
    endpoints: Endpoints, image: bytes, requests: int, clients: tuple[int, ...], label: str
) -> list[Result]:
    """Ferry gRPC Predict through Envoy at each number of clients."""
    with FerryClient(endpoints.grpc_target, API_KEY, timeout_s=120) as ferry:
        print(f"  served{label or ''}: {served_shape(ferry)}", flush=True)
        return [
            loaded(
                f"Ferry gRPC via Envoy, {n} clients{label}",
                lambda: ferry.predict(image),
                requests,
                n,
                endpoints.pids,
            )
            for n in clients
        ]


def served_shape(ferry: FerryClient) -> str:
    """How the stack serves the benchmark's model: its batch size (and where it came from), instances."""
    model = next(m for m in ferry.list_models() if m.name.rsplit("/", 1)[-1] == MODEL)
    batch = f"batch size {model.max_batch_size} ({model.batch_size_source})"
    return f"{MODEL} {batch}, {model.instances} instances"


def throughput(image: bytes, requests: int) -> None:
    """P2: 16 and 64 clients through the whole stack vs the raw model's best batch."""
    best = raw_best(image, requests)
    with ferry_stack() as endpoints:
        rows = grpc_rows(endpoints, image, requests, (16, 64), "")
    table("P2 throughput (ratio: vs the raw model's best batch)", [best, *rows], best)
    for row in rows:
        ratio = row.images_per_s / best.images_per_s
        verdict(f"P2 {row.name} / raw best", ratio, ">= 0.85", ratio >= 0.85)


def per_image_cpu(image: bytes, sizes: tuple[int, ...] = (1, 2, 4, 8), rounds: int = 4) -> dict[int, float]:
    """CPU ms per image of one forward pass on one thread (how each instance runs under load), by
    batch size: the median of ``rounds`` interleaved passes, timed by the thread's CPU clock, which
    other processes hardly change."""
    runner = raw.load(MODEL)
    item = raw.item(runner, image)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for size in sizes:
            runner.warm_up(batches=1, batch_size=size)
        spent: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(rounds):
            for size in sizes:
                started = time.thread_time()
                runner.run([item] * size)
                spent[size].append((time.thread_time() - started) * 1000 / size)
    finally:
        torch.set_num_threads(threads)
    return {size: statistics.median(figures) for size, figures in spent.items()}


def batching(image: bytes, requests: int) -> None:
    """P3: 64 clients with dynamic batching on, then off (batch size 1); first, what a larger batch
    saves per image on this device, the most batching can gain where the cores are the limit."""
    cpu = per_image_cpu(image)
    print("CPU per image of one forward pass on one thread, by batch size (median of 4): ", end="")
    print(", ".join(f"{size}: {ms:.1f} ms" for size, ms in cpu.items()))
    ceiling = cpu[1] / min(cpu.values())
    print(f"batching's ceiling where the cores are the limit (batch 1 / cheapest): {ceiling:.2f}x")
    with ferry_stack() as endpoints:
        [on] = grpc_rows(endpoints, image, requests, (64,), ", batching on")
    with ferry_stack({"FERRY_INFERENCE_MAX_BATCH_SIZE": "1"}) as endpoints:
        [off] = grpc_rows(endpoints, image, requests, (64,), ", batching off")
    table("P3 batching (ratio: vs batching off)", [on, off], off)
    ratio = on.images_per_s / off.images_per_s
    verdict("P3 batching on / off at 64 clients", ratio, ">= 1.3 on a CPU, >= 3 on a GPU", ratio >= 1.3)


def peers(image: bytes, requests: int, clients: int) -> None:
    """P4: Ferry vs MLServer (OIP gRPC) and vs a FastAPI endpoint (REST), same client, in turn."""
    from benchmarks.peers import servers  # only this benchmark needs the peers' environment
    from benchmarks.peers.model import GRAPH_VARIABLE

    if why := servers.missing():
        sys.exit(why)
    with ferry_stack() as endpoints:
        auth = (("authorization", f"Bearer {API_KEY}"),)
        ferry_oip = loaded(
            f"Ferry OIP gRPC via Envoy, {clients} clients",
            oip_call(endpoints.grpc_target, image, auth),
            requests,
            clients,
            endpoints.pids,
        )
        ferry_rest = loaded(
            f"Ferry REST via Envoy, {clients} clients",
            rest_call(endpoints.http_url, API_KEY, image),
            requests,
            clients,
            endpoints.pids,
        )
    mlservers = []
    # Its defaults, then one torch thread: on a busy 2-core machine MLServer's worker process ran
    # forward passes 100x slower with torch's 2 OpenMP threads than with one. The better of the two
    # is the reference, so the ratios never flatter Ferry.
    # And the module traced and frozen by hand, as Ferry does by default, and last everything Ferry
    # does copied by hand: two workers of one thread each (Ferry's two instances) with Ferry's
    # OpenMP settings. The reference is whatever a peer's user could reach with the same work.
    traced = {GRAPH_VARIABLE: "torchscript"}
    like_ferry = {**traced, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": "10000"}
    variants: tuple[tuple[str, dict[str, str], dict[str, object]], ...] = (
        ("", {}, {}),
        (", 1 torch thread", {"OMP_NUM_THREADS": "1"}, {}),
        (", traced", traced, {}),
        (", traced, 1 torch thread", {**traced, "OMP_NUM_THREADS": "1"}, {}),
        (", as Ferry: traced, 2 workers x 1 thread", like_ferry, {"parallel_workers": 2}),
    )
    for name, env, settings in variants:
        with servers.mlserver(env, **settings) as peer:
            call = oip_call(peer.grpc_target, image)
            row = f"MLServer 1.7 OIP gRPC, {clients} clients{name}"
            mlservers.append(loaded(row, call, requests, clients, {"mlserver": peer.pid}))
    ml = max(mlservers, key=lambda r: r.images_per_s)
    with servers.fastapi_endpoint() as peer:
        fast = loaded(
            f"FastAPI endpoint REST, {clients} clients",
            rest_call(peer.http_url, "", image, path="/predict"),
            requests,
            clients,
            {"fastapi": peer.pid},
        )
    table("P4 vs MLServer (ratio: vs the better MLServer row)", [ferry_oip, *mlservers], ml)
    table("P4 vs FastAPI (ratio: vs FastAPI)", [ferry_rest, fast], fast)
    speed, tail = ferry_oip.images_per_s / ml.images_per_s, ferry_oip.p99_ms / ml.p99_ms
    verdict("P4 throughput vs MLServer", speed, ">= 1.2", speed >= 1.2)
    verdict("P4 p99 vs MLServer", tail, "<= 0.7", tail <= 0.7)
    speed = ferry_rest.images_per_s / fast.images_per_s
    verdict("P4 throughput vs FastAPI", speed, ">= 1.3", speed >= 1.3)


@contextmanager
def inference_process(settings: dict[str, str]) -> Iterator[str]:
    """Runs ``python -m services.inference`` on a free port; yields its target once SERVING."""
    port = free_port()
    env = {
        **os.environ,
        "FERRY_INFERENCE_GRPC_PORT": str(port),
        "FERRY_INFERENCE_METRICS_PORT": "0",
        "FERRY_INFERENCE_LOG_LEVEL": "WARNING",
        **{f"FERRY_INFERENCE_{field}": value for field, value in settings.items()},
    }
    process = subprocess.Popen([sys.executable, "-m", "services.inference"], env=env)
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not is_serving(target, timeout_s=1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"inference did not become SERVING (exit code {process.poll()})")
            time.sleep(0.2)
        yield target
    finally:
        process.terminate()
        process.wait(timeout=30)


def service_rows(
    image: bytes, requests: int, clients: tuple[int, ...], settings: dict[str, str], label: str = ""
) -> list[Result]:
    """The inference service alone (``settings``: its FERRY_INFERENCE_* fields) at each client count."""
    rows: list[Result] = []
    with inference_process(settings) as target:
        call = inference_call(target, image)
        for n in clients:
            rows.append(measure(f"Ferry inference gRPC (no edge), {n} client(s){label}", call, requests, n))
    return rows


def service(image: bytes, requests: int, clients: int) -> None:
    """The inference service alone over gRPC, 1 and N clients, vs the raw model."""
    base, best = raw_batch1(image, requests), raw_best(image, requests)
    rows = service_rows(image, requests, (1, clients), {})
    table("inference service alone (ratio: vs the raw model's best batch)", [base, best, *rows], best)
    print(f"1 client p50 overhead vs raw batch 1: {rows[0].p50_ms - base.p50_ms:+.1f} ms")


def graph(image: bytes, requests: int, clients: int) -> None:
    """The inference service alone at ``clients``: traced graph, AOTInductor library and eager
    module, in turn (aoti's first start builds its library, minutes; later starts load it)."""
    rows = [
        row
        for name in ("torchscript", "aoti", "eager")
        for row in service_rows(image, requests, (clients,), {"GRAPH": name}, f", {name}")
    ]
    table("traced graph and AOTInductor vs eager module (ratio: vs eager)", rows, rows[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "benchmark",
        nargs="?",
        default="service",
        choices=["overhead", "throughput", "batching", "peers", "service", "graph"],
    )
    parser.add_argument("--requests", type=int, default=240, help="requests per row (bounded)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (peers, service)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="FERRY_X=VALUE",
        help="an environment variable for every Ferry stack started (repeatable), for example "
        "FERRY_GATEWAY_PREDICT_LATENCY_TOLERANCE=0 (no load shedding by latency)",
    )
    args = parser.parse_args()
    STACK_SETTINGS.update(dict(setting.split("=", 1) for setting in args.setting))
    requests = max(10, min(args.requests, 2000))
    image = cat_jpeg()
    print(f"{MODEL}, one 451x300 JPEG per request, {requests} requests per row")
    print(f"machine before: {machine()}; Ferry settings: {STACK_SETTINGS or 'defaults'}", flush=True)
    if args.benchmark == "overhead":
        overhead(image, requests)
    elif args.benchmark == "throughput":
        throughput(image, requests)
    elif args.benchmark == "batching":
        batching(image, requests)
    elif args.benchmark == "peers":
        peers(image, requests, args.clients)
    elif args.benchmark == "graph":
        graph(image, requests, args.clients)
    else:
        service(image, requests, args.clients)
    print(f"\nmachine after: {machine()}")


if __name__ == "__main__":
    main()
