"""The floor of edge and records: what the path of a sync prediction costs with none of Ferry's logic on it.

Issue 18 asks for edge and records (gateway, Envoy, store, NATS, jobs) at ≤ 1 ms of CPU per
request, every prediction recorded durably before it is answered. ``python -m benchmarks.edge_floor
[--seconds 10] [--rates 0 60]`` builds the same path out of its bare parts and measures each
process's CPU per request from ``/proc``, so the figure from ``benchmarks.cpu`` can be read against
the least the architecture itself costs on this machine:

* Envoy with the rendered config stripped to the transcoder and router (``benchmarks.envoy_cost``'s
  ``bare`` variant), a worker per core;
* a pass-through gateway: a ``grpc.aio`` server whose generic handler forwards the request's bytes,
  never parsed, to inference over one channel (the public hop and the hop to the model, as only the
  gateway is public), then records the prediction with Ferry's own ``RecordBatcher`` (group commit,
  JetStream's acknowledgement awaited before the answer) and answers inference's bytes; no auth,
  limits, spans, metrics, logs or validation;
* an inference that answers every call at once with the same bytes;
* nats-server with JetStream, store's real ``Ingestor`` with store's default settings, and Postgres
  (as ``benchmarks.records``).

Each rate is one row: ``0`` is closed loop (``--clients`` calls in flight, as fast as the path
goes: the per-second background of store and NATS spread over the most requests), any other rate
sends that many calls a second in bursts of ``--burst`` (answers that come back together, as a batch
of the model's), the regime of ``benchmarks.cpu`` with the real model (63 requests a second on the
2-core machine of session 7). Client processes are measured apart. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import grpc

from benchmarks import hops
from benchmarks.cpu import EDGE_AND_RECORDS, IDLE_S, cpu_seconds, load_average
from benchmarks.edge_refusals import envoy
from benchmarks.envoy_cost import PREDICT, variant_text
from benchmarks.overload import MODEL, cat_jpeg
from benchmarks.records import _ingest_process
from benchmarks.store import Bench, committed, event, own_servers
from devstack.envoy import EnvoyOptions
from devstack.infra import free_port
from ferry.events.v1 import events_pb2
from ferry.models.v1 import model_service_pb2
from ferry.types.v1 import types_pb2
from services.common.messaging import EVENTS_STREAM, connect
from services.common.publisher import Publisher
from services.gateway.record_batches import RecordBatcher

_SERVING = b"\x08\x01"  # gRPC health's HealthCheckResponse{status: SERVING}
_MESSAGE_LIMIT = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
PROCESSES = ("envoy", "gateway", "nats", "store", "postgres", "inference", "clients")


def _serve(port: int, answer: object) -> grpc.aio.Server:
    """A ``grpc.aio`` server on ``port``: health SERVING, every other method ``answer``."""

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
            if details.method == "/grpc.health.v1.Health/Check":
                return grpc.unary_unary_rpc_method_handler(lambda request, context: _SERVING)
            return grpc.unary_unary_rpc_method_handler(answer)  # type: ignore[arg-type]

    server = grpc.aio.server(options=_MESSAGE_LIMIT)
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    return server


def inference(port: int, answer: bytes) -> None:
    """An inference that answers every call at once with ``answer``."""

    async def predict(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return answer

    async def main() -> None:
        server = _serve(port, predict)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def recording(port: int, nats_url: str, inference_port: int, answer: bytes) -> None:
    """Answers each call, then records the prediction with Ferry's ``RecordBatcher``: the
    pass-through gateway (the answer is inference's, at ``inference_port``, the request's bytes
    forwarded unparsed) or, with ``inference_port`` 0, an inference that records its own answers."""

    async def main() -> None:
        async with AsyncExitStack() as stack:
            _, js = await connect(nats_url, "floor-recorder", stack)
            batcher = RecordBatcher(Publisher(js, budget_s=10.0), max_records=256, max_bytes=768 * 1024)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{inference_port}", options=_MESSAGE_LIMIT)
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PREDICT)
            template = event()

            async def predict(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
                answered = await call(request, timeout=10) if inference_port else answer
                record = events_pb2.PredictionRecorded()
                record.CopyFrom(template)  # the least a record can cost: a copy with its own id
                record.prediction.name = f"predictions/{uuid.uuid4()}"
                await batcher.record(record)
                return answered

            server = _serve(port, predict)
            await server.start()
            await server.wait_for_termination()

    asyncio.run(main())


def clients(
    target: str, body: bytes, rate: float, concurrency: int, burst: int, seconds: float
) -> tuple[int, int, float]:
    """Calls through ``target`` for ``seconds``: closed loop at ``concurrency`` when ``rate`` is 0,
    else ``rate`` calls a second in bursts of ``burst``. (OK answers, others, own CPU seconds)."""
    started_cpu = time.process_time()
    counts = [0, 0]

    async def main() -> None:
        channel = grpc.aio.insecure_channel(target)
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PREDICT)
        deadline = time.monotonic() + seconds

        async def one() -> None:
            try:
                await call(body, timeout=10)
                counts[0] += 1
            except grpc.aio.AioRpcError:
                counts[1] += 1

        async def loop() -> None:
            while time.monotonic() < deadline:
                await one()

        if rate <= 0:
            await asyncio.gather(*(loop() for _ in range(concurrency)))
        else:
            pending: set[asyncio.Task[None]] = set()
            started, sent = time.monotonic(), 0
            while time.monotonic() < deadline:
                await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
                for _ in range(burst):
                    task = asyncio.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                sent += burst
            await asyncio.gather(*pending)
        await channel.close()

    asyncio.run(main())
    return counts[0], counts[1], time.process_time() - started_cpu


def _start(target: Callable[..., object], *args: object) -> multiprocessing.process.BaseProcess:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


async def row(bench: Bench, pids: dict[str, int], envoy_port: int, body: bytes, rate: float,
              args: argparse.Namespace) -> dict[str, float]:  # fmt: skip
    """One rate through one design: each process's CPU ms per request, and ``req/s``."""
    await bench.js.purge_stream(EVENTS_STREAM)
    async with bench.database() as pool:
        consumer = f"floor-{uuid.uuid4().hex[:8]}"
        store = _start(_ingest_process, bench.nats_url, bench.database_url, consumer, True)
        try:
            await asyncio.sleep(3.0)  # store's start-up (imports, subscribe) is not a request's cost
            roots = {**pids, "store": store.pid or 0}
            idle_before = cpu_seconds(roots)
            await asyncio.sleep(IDLE_S)
            before = cpu_seconds(roots)
            ok, failed, clients_s = await asyncio.to_thread(
                _clients_in_process, f"127.0.0.1:{envoy_port}", body, rate, args
            )
            await committed(pool, ok)  # every answered prediction is in Postgres
            after = cpu_seconds(roots)
        finally:
            store.terminate()
            store.join()
        await bench.js.delete_consumer(EVENTS_STREAM, consumer)
    per = {name: (after[name] - before[name]) * 1000 / max(1, ok) for name in roots}
    idle = sum(before[name] - idle_before[name] for name in EDGE_AND_RECORDS if name in roots)
    idle_ms = idle / IDLE_S * args.seconds * 1000 / max(1, ok)  # what those processes spend unasked
    return per | {
        "clients": clients_s * 1000 / max(1, ok),
        "req/s": ok / args.seconds,
        "failed": failed,
        "idle": idle_ms,
    }


def _clients_in_process(
    target: str, body: bytes, rate: float, args: argparse.Namespace
) -> tuple[int, int, float]:
    """The clients in a process of their own (their CPU is not the path's)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(clients, (target, body, rate, args.clients, args.burst, args.seconds))


def one_at_a_time(ports: dict[str, int], body: bytes, image: bytes, rounds: int) -> None:
    """P1's floor: one call at a time, round-robin over the hops of the bare path, each row one
    hop further out (``benchmarks.hops``); with no model work, REST via Envoy is P1's floor."""

    def grpc_row(name: str, port: int) -> hops.Row:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = grpc.insecure_channel(
            f"127.0.0.1:{port}"
        ).unary_unary(PREDICT)

        def once() -> hops.Stages:
            call(body, timeout=10)
            return {}

        return hops.Row(name, once)

    rows = [
        hops.Row("in-process (no work)", dict),
        grpc_row("inference's port (answers at once)", ports["inference"]),
        grpc_row("gateway's port (pass-through, records)", ports["gateway"]),
        grpc_row("Envoy gRPC (bare)", ports["envoy"]),
        hops.Row(
            "Envoy REST (bare)",
            hops.rest_predict(
                f"http://127.0.0.1:{ports['envoy']}", "k", image, MODEL.removeprefix("models/")
            ),
        ),
    ]
    try:
        hops.interleave(rows, rounds)
    except urllib.error.HTTPError as err:  # not picklable: say what it was here
        raise SystemExit(f"{err.url}: {err.code} {err.read()[:300]!r}") from None
    print(f"\nP1's floor (REST via Envoy - in-process, p50): {hops.report(rows):.2f} ms", flush=True)


DESIGNS = {
    "gateway": "Envoy → pass-through gateway → inference; the gateway records (Ferry's design)",
    "direct": "Envoy → inference, which records its own answers (no gateway on the path)",
}


async def run(args: argparse.Namespace) -> None:
    image = cat_jpeg()
    body = model_service_pb2.PredictRequest(
        model=MODEL, image=types_pb2.Image(content=image)
    ).SerializeToString()
    prediction = event().prediction
    prediction.ClearField("timing")  # the stub does no model work: no decode or forward to subtract
    answer = model_service_pb2.PredictResponse(prediction=prediction).SerializeToString()
    async with own_servers("ferry-bench-floor-", "bench-floor") as servers:
        bench = Bench(servers.js, servers.postgres.uri, servers.nats_url, concurrency=2)
        model_port, gateway_port, direct_port = free_port(), free_port(), free_port()
        processes = {
            "inference": _start(inference, model_port, answer),
            "gateway": _start(recording, gateway_port, servers.nats_url, model_port, answer),
            "direct": _start(recording, direct_port, servers.nats_url, 0, answer),
        }
        pid = {name: process.pid or 0 for name, process in processes.items()}
        common = {"nats": servers.nats_pid, "postgres": servers.postgres.pid}
        try:
            with tempfile.TemporaryDirectory(prefix="edge-floor-") as folder, ExitStack() as stack:
                edges: dict[str, tuple[int, dict[str, int]]] = {}
                for design, upstream in (("gateway", gateway_port), ("direct", direct_port)):
                    port = free_port()
                    options = EnvoyOptions(listen_port=port, admin_port=free_port(), gateway_port=upstream)
                    (Path(folder) / design).mkdir()
                    envoy_pid = stack.enter_context(
                        envoy(Path(folder) / design, variant_text("bare", options, None), port, 0)
                    )
                    roles = (
                        {"gateway": pid["gateway"], "inference": pid["inference"]}
                        if design == "gateway"
                        else {"inference": pid["direct"]}
                    )
                    edges[design] = (port, {"envoy": envoy_pid, **roles, **common})
                await asyncio.sleep(3)  # Envoy's first health checks find its upstream ready
                for design, text in DESIGNS.items():
                    print(f"{design}: {text}")
                print(f"{'design':>8}{'rate':>12}{'req/s':>8}" + "".join(f"{name:>10}" for name in PROCESSES)
                      + f"{'floor':>10}{'net':>8}   (CPU ms per request; floor: "
                      + " + ".join(EDGE_AND_RECORDS) + "; net: less what they spend with no requests)",
                      flush=True)  # fmt: skip
                for rate in args.rates:
                    for design, (port, pids) in edges.items():
                        per = await row(bench, pids, port, body, rate, args)
                        floor = sum(per.get(name, 0.0) for name in EDGE_AND_RECORDS)
                        label = "closed loop" if rate <= 0 else f"{rate:.0f}/s"
                        cells = "".join(f"{per.get(name, 0.0):>10.3f}" for name in PROCESSES)
                        failed = f" ({per['failed']:.0f} failed)" if per["failed"] else ""
                        print(f"{design:>8}{label:>12}{per['req/s']:>8.0f}{cells}{floor:>10.3f}"
                              f"{floor - per['idle']:>8.3f}{failed}", flush=True)  # fmt: skip
                if args.rounds:
                    ports = {"inference": model_port, "gateway": gateway_port, "envoy": edges["gateway"][0]}
                    with multiprocessing.get_context("spawn").Pool(1) as pool:
                        await asyncio.to_thread(pool.apply, one_at_a_time, (ports, body, image, args.rounds))
        finally:
            for process in processes.values():
                process.kill()
                process.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[0.0, 60.0], help="calls a second (0: closed loop)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate runs")
    parser.add_argument("--clients", type=int, default=16, help="calls in flight in the closed loop")
    parser.add_argument(
        "--burst", type=int, default=4, help="calls sent (and answered) together at a paced rate"
    )
    parser.add_argument(
        "--rounds", type=int, default=300, help="one-at-a-time rounds for P1's floor (0: none)"
    )
    args = parser.parse_args()
    print(f"edge and records' floor, {os.cpu_count()} CPUs; /proc/loadavg {load_average()}", flush=True)
    asyncio.run(run(args))
    print(f"/proc/loadavg {load_average()}")


if __name__ == "__main__":
    main()
