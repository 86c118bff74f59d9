"""Envoy's own CPU per request with Ferry's config, and what each filter or feature of it costs.

``python -m benchmarks.envoy_cost`` starts Envoy with the rendered config (devstack/envoy.py) in
front of a trivial gateway (a grpc.aio process that answers every Predict with an empty
PredictResponse at once, and gRPC health SERVING), and for each variant of the config measures
Envoy's CPU (``/proc/<pid>/stat``) divided by the calls it answered, in three phases:

* ``grpc``: closed-loop native gRPC Predict calls (the cat JPEG, about 40 KB);
* ``infer``: closed-loop native gRPC Open Inference Protocol ``ModelInfer`` calls (the same JPEG
  as one BYTES element): the route that looks itself up again once the body is held
  (devstack/edge.py ``ROUTE_AGAIN_LUA``, variant ``noreroute`` without it);
* ``rest``: closed-loop REST ``POST /v1/models/...:predict`` calls with the same image in JSON;
* ``429``: the gateways' in-flight bound held full by calls the gateway never answers, then
  closed-loop gRPC Predict calls, each refused by Envoy itself (429 OVERLOADED).

The variants take one filter or feature out of the rendered config at a time (``--variants``;
``bare`` takes out all of them), so the difference to ``base`` is that part's cost. Variants are
alternated round by round (``--rounds``), and the clients run in processes of their own whose CPU
is printed too: on a shared 2-core machine the clients compete with Envoy for the cores. Not a
test: nothing asserts a time; the load average is printed with every row.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import yaml

from benchmarks.cpu import cpu_seconds
from benchmarks.edge_refusals import envoy
from benchmarks.overload import MODEL, cat_jpeg
from devstack import edge
from devstack.envoy import EnvoyOptions, render
from devstack.infra import free_port
from ferry.models.v1 import model_service_pb2
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.types.v1 import types_pb2

PREDICT = "/ferry.models.v1.ModelService/Predict"
MODEL_INFER = edge.OIP_GRPC_INFER["path"]
REST_PATH = f"/v1/{MODEL}:predict"
#: Calls a phase keeps in flight, and the bound Envoy enforces: the predict phases stay within it.
IN_FLIGHT = 8
#: gRPC health's HealthCheckResponse{status: SERVING}, as bytes.
_SERVING = b"\x08\x01"
HOLD_HEADER = "x-bench-hold"
PHASES = ("grpc", "infer", "rest", "429")

Config = dict[str, Any]


def _hcm(config: Config) -> Config:
    manager: Config = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return manager["typed_config"]  # type: ignore[no-any-return]


def _without_filters(*names: str) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        manager = _hcm(config)
        manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] not in names]

    return change


def _without_key(key: str) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        _hcm(config).pop(key, None)

    return change


def _routes(config: Config) -> list[Config]:
    return _hcm(config)["route_config"]["virtual_hosts"][0]["routes"]  # type: ignore[no-any-return]


def _plain_routes(config: Config) -> None:
    """Only the routes that reach a gateway (no 405s, files, CONNECT), and no per-route extras."""
    routes = _routes(config)
    routes[:] = [r for r in routes if "route" in r]
    for route in routes:
        route.pop("request_headers_to_add", None)
        route["route"].pop("retry_policy", None)


LUA = ("ferry.header_limits", "ferry.oip_rest.errors", "envoy.filters.http.lua")
HEALTH = "envoy.filters.http.health_check"
VARIANTS: dict[str, Callable[[Config], None]] = {
    "base": lambda config: None,
    "nolog": _without_key("access_log"),
    "noreplies": _without_key("local_reply_config"),
    "noheaderlua": _without_filters("ferry.header_limits"),
    "nooiplua": _without_filters("ferry.oip_rest.errors"),
    "nobodylua": _without_filters("envoy.filters.http.lua"),
    "nolua": _without_filters(*LUA),
    "nomethod": _without_filters("envoy.filters.http.header_mutation"),
    "nohealth": _without_filters(HEALTH),
    "nobuffer": _without_filters("envoy.filters.http.buffer"),
    "noreroute": _without_filters(edge.ROUTE_AGAIN_LUA),
    "plainroutes": _plain_routes,
}


_PARTS = tuple(VARIANTS.values())


def _bare(config: Config) -> None:
    for change in _PARTS:
        change(config)


VARIANTS["bare"] = _bare


#: The ports of a config rendered elsewhere (``--before``), replaced by this run's.
STANDIN_PORTS = (61001, 61002, 61003)


def standin_options() -> EnvoyOptions:
    """The options ``--before`` configs are rendered with (in another checkout, by the command in
    ``--before``'s help): stand-in ports, this benchmark's in-flight bound."""
    listen, admin, gateway = STANDIN_PORTS
    return EnvoyOptions(
        listen_port=listen, admin_port=admin, gateway_port=gateway, gateway_max_inflight=IN_FLIGHT
    )


def variant_text(name: str, options: EnvoyOptions, before: Path | None) -> str:
    """The rendered config with the variant's change, as JSON (which Envoy reads as YAML);
    ``before``: the config of ``--before``, with this run's ports."""
    if name == "before" and before is not None:
        text = before.read_text()
        for standin, port in zip(
            STANDIN_PORTS, (options.listen_port, options.admin_port, options.gateway_port), strict=True
        ):
            text = text.replace(f"port_value: {standin}}}", f"port_value: {port}}}")
        return text
    config = yaml.safe_load(render(options))
    VARIANTS[name](config)
    return json.dumps(config)


def gateway(port: int) -> None:
    """A gateway that answers at once: empty responses, health SERVING; holds HOLD_HEADER calls."""

    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if any(key == HOLD_HEADER for key, _ in context.invocation_metadata() or ()):
            await asyncio.sleep(3600)
        return b""

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
            if details.method == "/grpc.health.v1.Health/Check":
                return grpc.unary_unary_rpc_method_handler(lambda request, context: _SERVING)
            return grpc.unary_unary_rpc_method_handler(answer)  # type: ignore[arg-type]

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        server.add_generic_rpc_handlers((Handler(),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def grpc_load(
    target: str, body: bytes, clients: int, seconds: float, method: str = PREDICT
) -> tuple[int, int, float]:
    """Closed-loop gRPC calls of ``method``, a connection per client: (OK, other answers, own CPU s)."""
    started = time.process_time()
    counts = [0, 0]

    async def main() -> None:
        deadline = time.monotonic() + seconds
        channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(clients)
        ]

        async def client(channel: grpc.aio.Channel) -> None:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
            while time.monotonic() < deadline:
                try:
                    await call(body, timeout=10)
                    counts[0] += 1
                except grpc.aio.AioRpcError:
                    counts[1] += 1

        await asyncio.gather(*(client(channel) for channel in channels))
        for channel in channels:
            await channel.close()

    asyncio.run(main())
    return counts[0], counts[1], time.process_time() - started


async def _http_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One HTTP/1.1 keep-alive request: its status (the body read, content-length or chunked)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    length = (
        headers.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
        if b"content-length:" in headers
        else b"0"
    )
    await reader.readexactly(int(length))
    return status


def rest_load(port: int, body: bytes, clients: int, seconds: float) -> tuple[int, int, float]:
    """Closed-loop REST predict calls over HTTP/1.1, a connection per client: (200s, others, CPU s)."""
    started = time.process_time()
    counts = [0, 0]
    request = (
        f"POST {REST_PATH} HTTP/1.1\r\nhost: ferry\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def main() -> None:
        deadline = time.monotonic() + seconds

        async def client() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while time.monotonic() < deadline:
                counts[0 if await _http_call(reader, writer, request) == 200 else 1] += 1
            writer.close()

        await asyncio.gather(*(client() for _ in range(clients)))

    asyncio.run(main())
    return counts[0], counts[1], time.process_time() - started


@contextmanager
def held(target: str, body: bytes, calls: int) -> Iterator[None]:
    """``calls`` Predict calls the gateway holds: they fill Envoy's in-flight bound."""
    channel = grpc.insecure_channel(target)
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PREDICT)
    futures = [call.future(body, timeout=600, metadata=((HOLD_HEADER, "1"),)) for _ in range(calls)]
    time.sleep(0.5)
    try:
        yield
    finally:
        for future in futures:
            future.cancel()
        channel.close()


def _phase(
    pool: ProcessPoolExecutor, pid: int, load: Callable[[], list[Future[tuple[int, int, float]]]]
) -> tuple[int, int, float, float]:
    """(answers wanted, other answers, Envoy CPU s, clients' CPU s) of one phase."""
    before = cpu_seconds({"envoy": pid})["envoy"]
    results = [future.result() for future in load()]
    spent = cpu_seconds({"envoy": pid})["envoy"] - before
    return sum(r[0] for r in results), sum(r[1] for r in results), spent, sum(r[2] for r in results)


@dataclass
class Tally:
    """One variant's phase, summed over its slices."""

    calls: int = 0
    other: int = 0
    envoy_s: float = 0.0
    clients_s: float = 0.0
    per_slice: list[float] = field(default_factory=list)
    """Envoy CPU ms per call of each slice."""

    def add(self, wanted: int, other: int, envoy_s: float, clients_s: float) -> None:
        self.calls += wanted
        self.other += other
        self.envoy_s += envoy_s
        self.clients_s += clients_s
        self.per_slice.append(1000 * envoy_s / max(1, wanted + other))

    def cell(self, seconds: float) -> str:
        answered = max(1, self.calls + self.other)
        odd = f" ({self.other} other)" if self.other else ""
        return (
            f"{1000 * self.envoy_s / answered:.3f} ms envoy (slices' median"
            f" {statistics.median(self.per_slice):.3f}), {1000 * self.clients_s / answered:.2f} ms clients,"
            f" {self.calls / seconds:.0f}/s{odd}"
        )


def measure(
    names: list[str], args: argparse.Namespace, bodies: tuple[bytes, bytes, bytes], pool: ProcessPoolExecutor
) -> dict[str, dict[str, Tally]]:
    """Every variant's Envoy at once, in front of one gateway; each phase's load sent to them in
    turn, ``--seconds`` at a time, ``--rounds`` times: each variant meets the same load on the
    machine, minutes apart at most. Its tallies by variant and phase."""
    grpc_body, infer_body, rest_body = bodies
    gateway_port = free_port()
    upstream = multiprocessing.get_context("spawn").Process(target=gateway, args=(gateway_port,), daemon=True)
    upstream.start()
    tallies = {name: {phase: Tally() for phase in PHASES} for name in names}
    share = IN_FLIGHT // args.processes
    try:
        with tempfile.TemporaryDirectory(prefix="envoy-cost-") as folder, ExitStack() as stack:
            edges: dict[str, tuple[int, int]] = {}
            for name in names:
                port = free_port()
                options = EnvoyOptions(
                    listen_port=port,
                    admin_port=free_port(),
                    gateway_port=gateway_port,
                    gateway_max_inflight=IN_FLIGHT,
                )
                (Path(folder) / name).mkdir()
                text = variant_text(name, options, args.before)
                edges[name] = (
                    port,
                    stack.enter_context(envoy(Path(folder) / name, text, port, args.concurrency)),
                )
            time.sleep(3)  # the first health checks: a gateway is ready

            def grpc_phase(port: int) -> list[Future[tuple[int, int, float]]]:
                return [
                    pool.submit(grpc_load, f"127.0.0.1:{port}", grpc_body, share, args.seconds)
                    for _ in range(args.processes)
                ]

            def infer_phase(port: int) -> list[Future[tuple[int, int, float]]]:
                target = f"127.0.0.1:{port}"
                return [
                    pool.submit(grpc_load, target, infer_body, share, args.seconds, MODEL_INFER)
                    for _ in range(args.processes)
                ]

            def rest_phase(port: int) -> list[Future[tuple[int, int, float]]]:
                return [
                    pool.submit(rest_load, port, rest_body, share, args.seconds)
                    for _ in range(args.processes)
                ]

            def refused_phase(port: int) -> list[Future[tuple[int, int, float]]]:
                # Refusals come back at once: a client each on its own connection, as attackers.
                attackers = args.attackers // args.processes
                return [
                    pool.submit(grpc_load, f"127.0.0.1:{port}", grpc_body, attackers, args.seconds)
                    for _ in range(args.processes)
                ]

            for phase, load in (("grpc", grpc_phase), ("infer", infer_phase), ("rest", rest_phase)):
                for _ in range(args.rounds):
                    for name, (port, pid) in edges.items():
                        tallies[name][phase].add(*_phase(pool, pid, partial(load, port)))
            for _ in range(args.rounds):
                # Held afresh each round: the route's timeout (60 s) ends a held call.
                with ExitStack() as holding:
                    for port, _ in edges.values():
                        holding.enter_context(held(f"127.0.0.1:{port}", grpc_body, IN_FLIGHT))
                    for name, (port, pid) in edges.items():
                        ok, refusals, envoy_s, clients_s = _phase(pool, pid, partial(refused_phase, port))
                        tallies[name]["429"].add(refusals, ok, envoy_s, clients_s)
    finally:
        upstream.kill()
        upstream.join()
    return tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5, help="slices of each phase per variant")
    parser.add_argument("--seconds", type=float, default=2, help="length of a slice")
    parser.add_argument("--processes", type=int, default=2, help="client processes per phase")
    parser.add_argument("--attackers", type=int, default=16, help="refused clients, each its own connection")
    parser.add_argument("--concurrency", type=int, default=0, help="Envoy's workers (0: one per core)")
    parser.add_argument(
        "--before",
        type=Path,
        help="a config rendered by another checkout (variant 'before'), e.g. in a worktree of main: "
        "python -c 'from benchmarks.envoy_cost import standin_options as o; from devstack.envoy import "
        "render; print(render(o()))' > before.yaml (copy this file there first)",
    )
    args = parser.parse_args()
    image = cat_jpeg()
    grpc_body = model_service_pb2.PredictRequest(
        model=MODEL, image=types_pb2.Image(content=image)
    ).SerializeToString()
    image_input = oip.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="BYTES", shape=[1])
    image_input.contents.bytes_contents.append(image)
    infer_body = oip.ModelInferRequest(model_name=MODEL, inputs=[image_input]).SerializeToString()
    rest_body = json.dumps({"image": {"content": base64.b64encode(image).decode()}}).encode()
    print(
        f"bodies: gRPC {len(grpc_body)} bytes, ModelInfer {len(infer_body)} bytes,"
        f" REST {len(rest_body)} bytes; {IN_FLIGHT} calls in flight"
    )
    names = args.variants.split(",")
    print(f"load {open('/proc/loadavg').read().strip()}", flush=True)
    with ProcessPoolExecutor(args.processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        tallies = measure(names, args, (grpc_body, infer_body, rest_body), pool)
    print(f"load {open('/proc/loadavg').read().strip()}")
    seconds = args.rounds * args.seconds
    first = tallies[names[0]]
    for name in names:
        print(f"{name:>11}:")
        for phase in PHASES:
            ratio = statistics.median(tallies[name][phase].per_slice) / statistics.median(
                first[phase].per_slice
            )
            print(f"    {phase:>4} {tallies[name][phase].cell(seconds)}; {ratio:.2f}x {names[0]}'s median")


if __name__ == "__main__":
    main()
