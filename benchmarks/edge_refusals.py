"""Envoy alone: the CPU and latency of refusing calls over the gateways' in-flight bound.

``python -m benchmarks.edge_refusals`` starts Envoy with the rendered config in front of a gateway
that accepts connections and never answers, bound 2 (two held calls fill it), then floods it with
closed-loop gRPC Predict calls from processes of their own while a probe sends a call every 20 ms.
It prints Envoy's CPU per refusal (robust to a shared machine) and the probe's 429 p50/p99, for
each variant of the config asked for (``--variants``: the config as rendered, Envoy's HTTP/2
defaults, only the stream limit, no access log, no buffer filter on the predict routes, no Lua
filters), alternated in the same minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc

from benchmarks.cpu import cpu_seconds
from benchmarks.overload import MODEL, cat_jpeg, percentile
from devstack.envoy import EnvoyOptions, render
from devstack.infra import free_port
from ferry.models.v1 import model_service_pb2
from ferry.types.v1 import types_pb2

ENVOY = str(Path(sys.executable).parent / "envoy")
PREDICT = "/ferry.models.v1.ModelService/Predict"


def _no_access_log(text: str) -> str:
    return re.sub(r"\n {16}access_log:.*?(?=\n {16}route_config:)", "", text, flags=re.S)


def _no_predict_buffer(text: str) -> str:
    """The predict routes' buffer filter off (the router sees the headers at once)."""
    marker = "buffer: {max_request_bytes: "
    first = text.index(marker, text.index('/ferry.models.v1.ModelService/Predict"}'))
    end = text.index("}", first) + 1
    start = text.rindex('"@type"', 0, first)
    return (
        text[:start]
        + '"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig\n'
        + (" " * 30 + "disabled: true")
        + text[end:]
    )


_LUA_FILTER = (
    r"\n {18}(# [^\n]*\n {18})*- name: (ferry\.oip_rest\.errors|envoy\.filters\.http\.lua)\n"
    r".*?(?=\n {18}(#|- name))"
)


def _no_lua(text: str) -> str:
    return re.sub(_LUA_FILTER, "", text, flags=re.S)


_H2_OPTIONS = re.compile(r"\n {16}http2_protocol_options:\n( {18}[^\n]*\n)+")


def _mesh_h2(text: str) -> str:
    """Envoy's own HTTP/2 defaults (2^31 streams, 256 MiB windows per connection)."""
    return _H2_OPTIONS.sub("\n", text, count=1)


def _streams_only(text: str) -> str:
    """At most MAX_CONCURRENT_STREAMS per connection, Envoy's default windows."""
    return re.sub(r"\n {18}initial_(stream|connection)_window_size: \d+", "", text)


VARIANTS: dict[str, Callable[[str], str]] = {
    "base": lambda text: text,
    "mesh-h2": _mesh_h2,
    "streamsonly": _streams_only,
    "nolog": _no_access_log,
    "nobuffer": _no_predict_buffer,
    "nolua": _no_lua,
}


@contextmanager
def envoy(folder: Path, text: str, port: int, concurrency: int) -> Iterator[int]:
    config = folder / "envoy.yaml"
    config.write_text(text)
    with (folder / "envoy.log").open("wb") as log:
        process = subprocess.Popen(
            [ENVOY, "-c", str(config), "--use-dynamic-base-id", "-l", "error"]
            + (["--concurrency", str(concurrency)] if concurrency else []),
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError as err:
                    if time.monotonic() > deadline or process.poll() is not None:
                        tail = (folder / "envoy.log").read_text()[-2000:]
                        raise SystemExit(f"envoy did not start: {tail}") from err
                    time.sleep(0.2)
            yield process.pid
        finally:
            process.terminate()
            process.wait(30)


def flood(
    target: str, body: bytes, clients: int, channels: int, seconds: float, niceness: int
) -> tuple[int, float]:
    """Closed-loop clients over ``channels`` connections: calls answered, own CPU seconds. In a
    session (autogroup) of its own, so ``--priority`` never reaches it."""
    try:
        os.setsid()
    except OSError:
        pass  # a session leader already
    os.nice(niceness)
    started = time.process_time()

    async def main() -> int:
        done = 0
        deadline = time.monotonic() + seconds
        opened = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(channels)
        ]

        async def client(n: int) -> None:
            nonlocal done
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = opened[n % channels].unary_unary(PREDICT)
            while time.monotonic() < deadline:
                try:
                    await call(body, timeout=10)
                except grpc.aio.AioRpcError:
                    pass
                done += 1

        await asyncio.gather(*(client(n) for n in range(clients)))
        for channel in opened:
            await channel.close()
        return done

    done = asyncio.run(main())
    return done, time.process_time() - started


async def probe(target: str, body: bytes, seconds: float) -> list[float]:
    times: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PREDICT)

        async def one() -> None:
            started = time.perf_counter()
            try:
                await call(body, timeout=2)
            except grpc.aio.AioRpcError as err:
                if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    times.append(time.perf_counter() - started)

        calls = []
        begun = time.monotonic()
        for n in range(int(seconds * 50)):
            await asyncio.sleep(max(0.0, begun + n / 50 - time.monotonic()))
            calls.append(asyncio.ensure_future(one()))
        await asyncio.gather(*calls)
    return times


def hold(target: str, body: bytes, calls: int) -> list[grpc.Future]:  # type: ignore[type-arg]
    """``calls`` calls the stalled gateway holds: they fill the bound."""
    held: grpc.UnaryUnaryMultiCallable[bytes, bytes] = grpc.insecure_channel(target).unary_unary(PREDICT)
    return [held.future(body, timeout=600) for _ in range(calls)]


def measure(variant: str, args: argparse.Namespace, body: bytes, pool: ProcessPoolExecutor) -> str:
    port = free_port()
    # The gateway: a port the kernel accepts connections on, which nobody ever answers.
    with (
        socket.create_server(("127.0.0.1", 0), backlog=64) as gateway,
        tempfile.TemporaryDirectory(prefix="edge-refusals-") as folder,
    ):
        options = EnvoyOptions(
            listen_port=port,
            admin_port=free_port(),
            gateway_port=gateway.getsockname()[1],
            gateway_max_inflight=2,
        )
        with envoy(Path(folder), VARIANTS[variant](render(options)), port, args.concurrency) as pid:
            target = f"127.0.0.1:{port}"
            held = hold(target, body, 2)
            time.sleep(1)
            before = cpu_seconds({"envoy": pid})["envoy"]
            load = os.getloadavg()[0]
            share = args.clients // args.processes
            floods = [
                pool.submit(flood, target, body, share, args.channels, args.seconds, args.nice)
                for _ in range(args.processes)
            ]
            time.sleep(1)
            probed = asyncio.run(probe(target, body, args.seconds - 2))
            results = [f.result() for f in floods]
            spent = cpu_seconds({"envoy": pid})["envoy"] - before
            for call in held:
                call.cancel()
    calls = sum(done for done, _ in results) + len(probed)
    client_cpu = sum(cpu for _, cpu in results)
    return (
        f"{variant:>11}: {calls / args.seconds:6.0f} refusals/s;"
        f" CPU per refusal envoy {1000 * spent / calls:.3f} ms,"
        f" flood {1000 * client_cpu / calls:.3f} ms; probe 429 p50 {1000 * percentile(probed, 50):.1f}"
        f" p99 {1000 * percentile(probed, 99):.1f} ms ({len(probed)}); load {load:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--channels", type=int, default=1, help="connections per flooding process")
    parser.add_argument("--nice", type=int, default=0, help="the flooding processes' niceness")
    parser.add_argument("--concurrency", type=int, default=0, help="Envoy's workers (0: one per core)")
    parser.add_argument(
        "--priority",
        action="store_true",
        help="Envoy and the probe in a session (autogroup) at nice -10 (needs CAP_SYS_NICE): on a"
        " machine others load, their latencies are then Envoy's, not the wait for a core",
    )
    parser.add_argument("--small", action="store_true", help="an empty image instead of the cat JPEG")
    args = parser.parse_args()
    image = b"" if args.small else cat_jpeg()
    body = model_service_pb2.PredictRequest(
        model=MODEL, image=types_pb2.Image(content=image)
    ).SerializeToString()
    print(f"request body {len(body)} bytes")
    if args.priority:
        try:
            os.setsid()
        except OSError:
            pass  # a session leader already
        Path("/proc/self/autogroup").write_text("-10")
    with ProcessPoolExecutor(args.processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _ in range(args.rounds):
            for variant in args.variants.split(","):
                print(measure(variant, args, body, pool), flush=True)


if __name__ == "__main__":
    main()
