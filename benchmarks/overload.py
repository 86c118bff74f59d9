"""Overload: what admission control does for predictions sent at 3x the rate the stack sustains.

``python -m benchmarks.overload`` (or ``make bench-overload``) starts its own local stack on free
ports in a temporary folder and, through Envoy over gRPC, with a key whose rate limit is out of
the way:

1. unloaded: predictions one at a time, their p50 and p99;
2. sustainable: a closed loop of a few clients, the predictions/s the stack completes;
3. overload: an open loop sending at 3x that rate (arrivals do not wait for answers, as real
   users' do not), for a fixed time.

It prints the admitted predictions' p99 against the unloaded p99 (the goal: at most 2x), how
fast the refused ones were answered (the goal: within 10 ms), and the counts of every outcome.

Then two attacks on the front door (issue 17), in the same run:

4. over the in-flight bound: ``--overbound-clients`` (400) closed-loop clients, more than the
   gateway's FERRY_GATEWAY_MAX_INFLIGHT (256), each sending again as soon as it is answered
   (ignoring the advised retry delay, as a hostile or naive client does): the 429 OVERLOADED
   answers' p50 (the goal: <= 5 ms) for a probe of 50 calls a second over ``--probe-connections``
   (50) connections, each a client that sends once a second as the ``Retry-After`` asks, and the
   goodput against the sustainable rate (the goal: within 10 %), with the calls Envoy held from
   the attackers' connections (devstack/refusal_hold.py); once per shape of
   ``--attacker-connections``: a connection per client (as clients on hosts of their own), then
   each attacking process's clients on one connection (one gRPC channel, which Envoy lets carry
   100 calls at once);
5. a wrong-key flood over REST from ``--flood-sources`` (15) loopback source addresses
   (127.0.0.2, ...; Envoy puts the real peer in x-forwarded-for), while never-used valid keys
   call from another address once a second: how many valid calls were refused (the goal: none),
   and the failed key lookups that reached store (store's own request counter, code NOT_FOUND,
   every store process) against the documented cap for the whole deployment, however many
   gateways (``--gateways``): ten times FERRY_GATEWAY_AUTH_FAILURE_RATE_PER_S sustained (50/s),
   with a burst of twice that (100), so at most 50 x T + 100 in T seconds
   (``services.gateway.admission.lookup_cap``).

For each over-bound phase it prints where the machine's CPU went (each process's cores busy,
and how many of its threads waited for a core on average: the scheduler's own accounting, which
tells work from waiting), and predictions per second of inference's CPU against the same in the
sustainable phase just before. ``--envoy-autogroup-nice -10,0 --rounds 2`` alternates Envoy's
priority in one stack (A B A B), the sustainable rate measured again before each phase.

Not a test: nothing here asserts a time. Others may share this machine: the load is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import itertools
import json
import multiprocessing
import os
import re
import secrets
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from skimage import data as skimage_data

from benchmarks.cpu import cpu_seconds, machine_busy_seconds, sched_seconds
from benchmarks.local import local_stack, unthrottled_key
from devstack.stack import Endpoints
from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.gateway.admission import lookup_cap
from services.gateway.settings import GatewaySettings

MODEL = "models/efficientnet-lite0"


def cat_jpeg() -> bytes:
    buffer = io.BytesIO()
    pixels = skimage_data.chelsea()  # type: ignore[no-untyped-call]
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


#: Connections the open loop's arrivals are spread over (see ``arrivals_at``).
OPEN_LOOP_CONNECTIONS = 16


async def arrivals_at(
    benches: list[Bench], rate: float, seconds: float, timeout_s: float = 60
) -> list[tuple[str, float]]:
    """Sends at ``rate`` per second for ``seconds``, whatever the answers, taking ``benches`` (each its
    own connection) in turn, as users arrive on connections of their own: one HTTP/2 connection
    carries at most 100 calls at once (Envoy's edge limit) and would queue the rest in this client
    instead of reaching the bounds under test. Returns every outcome."""
    calls = []
    started = time.monotonic()
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        calls.append(asyncio.ensure_future(benches[n % len(benches)].predict(timeout_s)))
    return list(await asyncio.gather(*calls))


class Bench:
    """Predictions through Envoy, each recorded as (outcome, seconds)."""

    def __init__(self, channel: grpc.aio.Channel, key: str, image: bytes) -> None:
        self._stub = model_service_pb2_grpc.ModelServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {key}"),)
        self._request = model_service_pb2.PredictRequest(model=MODEL, image=types_pb2.Image(content=image))
        self.first_error: str | None = None
        self.outcomes: Counter[str] = Counter()
        """Each outcome's count; a 429 that is not the in-flight bound's is told apart by its text."""

    async def predict(self, timeout_s: float = 60) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            await self._stub.Predict(self._request, metadata=self._metadata, timeout=timeout_s)
            outcome = "OK"
        except grpc.aio.AioRpcError as err:
            outcome = err.code().name
            if outcome != "RESOURCE_EXHAUSTED" and self.first_error is None:
                self.first_error = f"{outcome}: {err.details()}"
            if outcome == "RESOURCE_EXHAUSTED" and "in flight" not in (err.details() or ""):
                self.outcomes[f"RESOURCE_EXHAUSTED: {(err.details() or '')[:60]}"] += 1
            else:
                self.outcomes[outcome] += 1
            return outcome, time.perf_counter() - started
        self.outcomes[outcome] += 1
        return outcome, time.perf_counter() - started

    async def unloaded(self, requests: int) -> list[float]:
        """Latencies of ``requests`` predictions, one at a time."""
        return [(await self.predict())[1] for _ in range(requests)]

    async def sustainable(self, clients: int, seconds: float) -> float:
        """Predictions/s completed by ``clients`` clients that each send the next on an answer."""
        done = 0
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                outcome, _ = await self.predict()
                done += outcome == "OK"

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.perf_counter() - started)

    async def closed_loop(self, clients: int, seconds: float) -> tuple[int, list[float]]:
        """``clients`` closed-loop clients for ``seconds``: predictions done, and each 429's latency."""
        done, refused = 0, []
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                outcome, took = await self.predict()
                done += outcome == "OK"
                if outcome == "RESOURCE_EXHAUSTED":
                    refused.append(took)

        await asyncio.gather(*(client() for _ in range(clients)))
        return done, refused


#: The probe's pause between calls (50 a second, over all its connections).
PROBE_PAUSE_S = 0.02


async def probe(
    target: str, key: str, image: bytes, connections: int, start_s: float, seconds: float
) -> list[tuple[str, float]]:
    """After ``start_s``, a call every PROBE_PAUSE_S for ``seconds``, taking ``connections``
    connections (opened first) in turn, not waiting for answers (one that gets in waits behind the
    admitted ones), each given up after 2 s: every outcome. Over 50 connections each sends once a
    second, as clients that wait the Retry-After (1 s) of a refusal do; over 1, one client sends
    50 a second whatever it is told (Envoy holds such a connection's calls past its share of
    refusals, devstack/refusal_hold.py)."""
    started = time.monotonic()
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection each
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        await asyncio.sleep(max(0.0, start_s - (time.monotonic() - started)))
        benches = [Bench(channel, key, image) for channel in channels]
        return await arrivals_at(benches, 1 / PROBE_PAUSE_S, seconds, timeout_s=2)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


@dataclass
class Attack:
    """What one attacking process saw: predictions done, each 429's latency, its own CPU seconds
    and the seconds its threads waited for a core (``sched_seconds``)."""

    done: int
    refused: list[float]
    cpu_s: float
    outcomes: dict[str, int]
    wait_s: float = 0.0


def lower_priority(niceness: int, own_session: bool) -> None:
    """This process at ``niceness``; with ``own_session``, also against other sessions' processes.

    With the kernel's autogroups (``/proc/sys/kernel/sched_autogroup_enabled``) each session's
    processes share one scheduling group, and groups share the CPU equally whatever their
    processes' nice: the stack's processes each lead a session (devstack/infra.py), so a nice 19
    process in the benchmark's session still takes its group's share (measured: a nice 19 spin got
    22 % of a core beside another session's spin, 3 % in a session of its own at autogroup nice 19).
    A session of its own whose group is at ``niceness`` makes the priority hold.
    """
    if niceness and own_session:
        try:
            os.setsid()
            Path("/proc/self/autogroup").write_text(str(niceness))
        except OSError:
            pass  # no autogroups (or already a session leader): plain nice holds
    os.nice(niceness)


def attack(target: str, key: str, image: bytes, shape: Attackers, clients: int, seconds: float) -> Attack:
    """Runs in a process of its own: ``clients`` closed-loop clients at ``shape.niceness``, spread
    over ``shape.connections`` HTTP/2 connections (each its own gRPC channel)."""
    lower_priority(shape.niceness, shape.own_session)
    connections = shape.connections or clients
    started, waited = time.process_time(), sched_seconds()[1]

    async def main() -> tuple[int, list[float]]:
        # A local subchannel pool: channels to one target would otherwise share one connection.
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
        try:
            benches = [Bench(channel, key, image) for channel in channels]
            shares = [clients // connections + (n < clients % connections) for n in range(connections)]
            results = await asyncio.gather(
                *(bench.closed_loop(share, seconds) for bench, share in zip(benches, shares, strict=True))
            )
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
        for bench in benches:
            outcomes.update(bench.outcomes)
        return sum(done for done, _ in results), [took for _, refused in results for took in refused]

    outcomes: Counter[str] = Counter()
    done, refused = asyncio.run(main())
    return Attack(done, refused, time.process_time() - started, dict(outcomes), sched_seconds()[1] - waited)


def set_autogroup_nice(pid: int, nice: int) -> None:
    """The nice of the session (autogroup) ``pid`` leads: below 0 needs CAP_SYS_NICE."""
    Path(f"/proc/{pid}/autogroup").write_text(str(nice))


#: The probe's autogroup nice with ``--probe-priority``: ahead of every other session's processes.
PROBE_AUTOGROUP_NICE = -10


def priority_probe(
    target: str, key: str, image: bytes, connections: int, start_s: float, seconds: float
) -> list[tuple[str, float]]:
    """The probe in a process of its own, in a session whose autogroup is ahead of every other
    (needs CAP_SYS_NICE): as a client on a machine of its own, it never waits for a core, so its
    latency is the stack's. Its connections are opened before the timed calls."""
    os.setsid()
    Path("/proc/self/autogroup").write_text(str(PROBE_AUTOGROUP_NICE))
    return asyncio.run(probe(target, key, image, connections, start_s, seconds))


@dataclass
class Overbound:
    """The over-bound phase: attackers' goodput and 429s, the probe's calls, Envoy's own 429 times."""

    goodput: float
    refused: list[float]
    attackers_cpu_s: float
    outcomes: dict[str, int]
    probe: list[tuple[str, float]]
    attackers_wait_s: float = 0.0
    elapsed_s: float = 0.0
    sched: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Each watched process's (CPU, wait for a core) seconds over ``elapsed_s`` (``sched_seconds``)."""
    busy_s: float = 0.0
    """CPU seconds the whole machine spent over ``elapsed_s``."""


async def overbound(
    target: str,
    key: str,
    image: bytes,
    attackers: Attackers,
    seconds: float,
    probe_priority: bool = False,
    watched: dict[str, int] | None = None,
    probe_connections: int = 1,
) -> Overbound:
    """``attackers.clients`` closed-loop attackers, which send again as soon as they are answered,
    for ``seconds``; meanwhile (after they are under way) a probe sends a call every 20 ms: here,
    at this process's priority, or with ``probe_priority`` ahead of every process (``priority_probe``)."""
    processes = attackers.processes
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(processes, mp_context=spawn) as pool,
        ProcessPoolExecutor(1, mp_context=spawn) as prober,
    ):
        # Start the processes (imports: seconds) before the clock runs.
        await asyncio.gather(
            *(loop.run_in_executor(pool, os.getpid) for _ in range(processes)),
            loop.run_in_executor(prober, os.getpid),
        )
        clients = attackers.clients
        share = [clients // processes + (n < clients % processes) for n in range(processes)]
        watched = watched or {}
        sched, busy = {name: sched_seconds(pid) for name, pid in watched.items()}, machine_busy_seconds()
        started = time.perf_counter()
        attacks = [
            loop.run_in_executor(pool, attack, target, key, image, attackers, n, seconds) for n in share
        ]
        args = (target, key, image, probe_connections, min(3.0, seconds / 4), seconds / 2)
        if probe_priority:
            probed = await loop.run_in_executor(prober, priority_probe, *args)
        else:
            probed = await probe(*args)
        results = await asyncio.gather(*attacks)
        elapsed = time.perf_counter() - started
        busy = machine_busy_seconds() - busy
        sched = {name: since_then(sched_seconds(pid), sched[name]) for name, pid in watched.items()}
    return Overbound(
        goodput=sum(a.done for a in results) / elapsed,
        refused=[s for a in results for s in a.refused],
        attackers_cpu_s=sum(a.cpu_s for a in results),
        outcomes=dict(sum((Counter(a.outcomes) for a in results), Counter())),
        probe=probed,
        attackers_wait_s=sum(a.wait_s for a in results),
        elapsed_s=elapsed,
        sched=sched,
        busy_s=busy,
    )


def envoy_refusals_ms(log: Path, since: float, until: float) -> list[float]:
    """Envoy's own time (``duration_ms`` of its access log) for the 429s it logged between two
    wall-clock times: from the request's first byte to the answer's last, the client left out."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        if '"grpc_status":"ResourceExhausted"' not in line and '"code":429' not in line:
            continue
        try:
            entry = json.loads(line)
            stamp = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        except (ValueError, KeyError):
            continue
        if since <= stamp <= until:
            times.append(float(entry["duration_ms"]))
    return times


@dataclass(frozen=True)
class Attackers:
    """How the over-bound phase's clients run."""

    clients: int
    processes: int
    niceness: int
    connections: int
    """HTTP/2 connections per process (0: one per client; 1: a process's clients multiplexed on one)."""
    own_session: bool = False
    """Each process in a session (autogroup) of its own at ``niceness`` (see ``lower_priority``)."""


async def run(
    endpoints: Endpoints,
    seconds: float,
    clients: int,
    factor: float,
    attackers: list[Attackers],
    open_loop: bool = True,
    probe_priority: bool = False,
    envoy_nices: list[int] | None = None,
    rounds: int = 1,
    probe_connections: int = 1,
) -> None:
    """The phases in order; the over-bound one ``rounds`` times, each time once per Envoy autogroup
    nice of ``envoy_nices`` (None: left as started) and, inside that, per shape of ``attackers``."""
    target = endpoints.grpc_target
    pids = {name: endpoints.pids[name] for name in [*processes(endpoints, "gateway"), "envoy"]}
    key, image = await unthrottled_key(target, ["predict"]), cat_jpeg()
    async with grpc.aio.insecure_channel(target) as channel:
        bench = Bench(channel, key, image)
        outcome, _ = await bench.predict()  # warm: connections, the model, the catalog
        if outcome != "OK":
            raise SystemExit(f"a prediction failed: {bench.first_error}")
        await bench.unloaded(10)
        print(f"load (1 min) before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs, shared with others")
        unloaded = await bench.unloaded(60)
        p99_unloaded = percentile(unloaded, 99)
        print(f"unloaded, 1 at a time: p50 {ms(percentile(unloaded, 50))}  p99 {ms(p99_unloaded)}")
        rate = await bench.sustainable(clients, seconds / 2)
        print(f"sustainable, {clients} clients in a closed loop: {rate:.1f} predictions/s")
        await asyncio.sleep(2)  # let the queues drain
        if open_loop:
            options = [("grpc.use_local_subchannel_pool", 1)]  # a connection each
            channels = [
                grpc.aio.insecure_channel(target, options=options) for _ in range(OPEN_LOOP_CONNECTIONS)
            ]
            try:
                arrivals = await arrivals_at([Bench(c, key, image) for c in channels], factor * rate, seconds)
            finally:
                await asyncio.gather(*(c.close() for c in channels))
            print_open_loop(arrivals, factor, rate, seconds, p99_unloaded)
            await asyncio.sleep(2)
        watched = {**pids, "inference": endpoints.pids["inference"], "the benchmark (probe)": os.getpid()}
        nices: list[int | None] = [*envoy_nices] if envoy_nices else [None]
        per_core = 0.0  # predictions per second of inference's CPU, in the last sustainable phase
        for round_, nice, shape in itertools.product(range(rounds), nices, attackers):
            if nice is not None:  # Envoy leads a session of its own (devstack/infra.py)
                set_autogroup_nice(endpoints.pids["envoy"], nice)
                print(f"round {round_ + 1}: Envoy's session at autogroup nice {nice}")
            if rounds > 1 or len(nices) > 1:  # the same minutes' sustainable rate: others' load moves it
                inference_before = sched_seconds(endpoints.pids["inference"])[0]
                started = time.perf_counter()
                rate = await bench.sustainable(clients, seconds / 2)
                busy = (sched_seconds(endpoints.pids["inference"])[0] - inference_before) / (
                    time.perf_counter() - started
                )
                per_core = rate / busy if busy else 0.0
                print(f"  sustainable just before: {rate:.1f} predictions/s (inference {busy:.2f} cores)")
                await asyncio.sleep(2)
            before, since, load = cpu_seconds(pids), time.time(), os.getloadavg()[0]
            held_before = envoy_holds(endpoints.envoy_admin_url)
            over = await overbound(
                target, key, image, shape, seconds, probe_priority, watched, probe_connections
            )
            spent = {name: used - before[name] for name, used in cpu_seconds(pids).items()}
            at_edge = envoy_refusals_ms(Path(endpoints.logs_dir) / "envoy.log", since, time.time())
            print_overbound(over, shape, seconds, rate, spent, at_edge, probe_priority, probe_connections)
            print_held(endpoints.envoy_admin_url, held_before)
            print_cores(over)
            if per_core and (inference := over.sched["inference"][0]):
                done = over.goodput * over.elapsed_s
                print(
                    f"  predictions per second of inference's CPU: {done / inference:.1f}, unloaded"
                    f" {per_core:.1f} ({done / inference / per_core:.2f}x): what goodput lost beyond"
                    " that is inference's share of the cores"
                )
            print(f"  load (1 min) {load:.2f} -> {os.getloadavg()[0]:.2f}")
            await asyncio.sleep(2)  # the admitted calls drain
    print(f"load (1 min) after: {os.getloadavg()[0]:.2f}")


def print_open_loop(
    outcomes: list[tuple[str, float]], factor: float, rate: float, seconds: float, p99_unloaded: float
) -> None:
    admitted = [s for outcome, s in outcomes if outcome == "OK"]
    refused = [s for outcome, s in outcomes if outcome == "RESOURCE_EXHAUSTED"]
    p99_admitted = percentile(admitted, 99)
    print(
        f"overload, open loop at {factor:g}x = {factor * rate:.1f}/s for {seconds:g} s "
        f"(over {OPEN_LOOP_CONNECTIONS} connections):"
    )
    print(f"  outcomes: {dict(Counter(outcome for outcome, _ in outcomes))}")
    if admitted:
        print(
            f"  admitted {len(admitted)} ({len(admitted) / seconds:.1f}/s):"
            f" p50 {ms(percentile(admitted, 50))}"
            f"  p99 {ms(p99_admitted)} = {p99_admitted / p99_unloaded:.2f}x the unloaded p99 (goal <= 2x)"
        )
    if refused:
        print(
            f"  refused {len(refused)} with 429: p50 {ms(percentile(refused, 50))}"
            f"  p99 {ms(percentile(refused, 99))}"
            f"  max {ms(max(refused))} (goal: within 10 ms)"
        )


def print_overbound(
    over: Overbound,
    attackers: Attackers,
    seconds: float,
    rate: float,
    spent: dict[str, float],
    at_edge: list[float],
    probe_priority: bool = False,
    probe_connections: int = 1,
) -> None:
    connections = (
        f"{attackers.connections} HTTP/2 connection(s) each"
        if attackers.connections
        else "a connection per client"
    )
    print(
        f"over the in-flight bound, {attackers.clients} closed-loop clients in {attackers.processes}"
        f" processes at nice {attackers.niceness}"
        f" ({'sessions of their own' if attackers.own_session else 'in the benchmark session'}),"
        f" {connections},"
        f" for {seconds:g} s:"
    )
    print(
        f"  goodput {over.goodput:.1f} predictions/s = {over.goodput / rate:.2f}x the sustainable rate"
        " (goal >= 0.9x)"
    )
    probed = [took for outcome, took in over.probe if outcome == "RESOURCE_EXHAUSTED"]
    where = (
        f"a session of its own at autogroup nice {PROBE_AUTOGROUP_NICE}"
        if probe_priority
        else "nice 0, in the benchmark's process"
    )
    each = f"each sending 1 every {probe_connections * PROBE_PAUSE_S:g} s"
    print(
        f"  an over-bound call (the probe: 50/s over {probe_connections} connection(s), {each}, {where}):"
        f" {len(probed)} of"
        f" {len(over.probe)} refused with 429, p50 {ms(percentile(probed, 50))}"
        f"  p99 {ms(percentile(probed, 99))} (goal: p50 <= 5 ms)"
    )
    served = sum(outcome == "OK" for outcome, _ in over.probe)
    print(
        f"  the probe's outcomes: {dict(Counter(outcome for outcome, _ in over.probe))}; predictions"
        f" served to attackers and probe together {over.goodput + served / over.elapsed_s:.1f}/s ="
        f" {(over.goodput + served / over.elapsed_s) / rate:.2f}x the sustainable rate (the goodput"
        " above counts the attackers' alone: a probe's call admitted is one of theirs not)"
    )
    if at_edge:
        print(
            f"  Envoy's own time for its {len(at_edge)} 429s (access log, client left out):"
            f" p50 {percentile(at_edge, 50):.0f} ms  p99 {percentile(at_edge, 99):.0f} ms"
        )
    print(f"  the attackers' outcomes: {over.outcomes}")
    print(
        f"  the attackers' own {len(over.refused)} 429s: p50 {ms(percentile(over.refused, 50))}"
        f"  p99 {ms(percentile(over.refused, 99))} (a closed loop that resends at once waits"
        " about clients over the bound / refusals a second, whatever the server's speed)"
    )
    calls = max(1, len(over.refused) + len(over.probe) + round(over.goodput * seconds))
    spent = {**spent, "attackers (would be other machines)": over.attackers_cpu_s}
    print(
        f"  CPU per call ({calls / seconds:.0f} calls/s, admitted and refused; robust to the load): "
        + ", ".join(f"{name} {1000 * used / calls:.3f} ms" for name, used in spent.items())
    )


def envoy_holds(admin_url: str) -> dict[str, float]:
    """Envoy's fault filter counters on its public listener: the calls it held (refusal_hold)."""
    with urllib.request.urlopen(f"{admin_url}/stats?filter=^http\\.public\\.fault\\.", timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return {name.rsplit(".", 1)[1]: float(value) for name, value in (line.split(": ", 1) for line in lines)}


def print_held(admin_url: str, before: dict[str, float]) -> None:
    """The calls Envoy held during the phase (devstack/refusal_hold.py), and those past its cap."""
    now = envoy_holds(admin_url)
    if not now:
        print("  held by Envoy: none (FERRY_ENVOY_REFUSALS_PER_S=0: no hold)")
        return
    held = now.get("delays_injected", 0) - before.get("delays_injected", 0)
    over = now.get("faults_overflow", 0) - before.get("faults_overflow", 0)
    print(f"  held by Envoy (refusal_hold): {held:.0f} calls; past the cap of held calls: {over:.0f}")


def since_then(now: tuple[float, float], then: tuple[float, float]) -> tuple[float, float]:
    """(CPU, wait) seconds between two ``sched_seconds`` readings."""
    return now[0] - then[0], now[1] - then[1]


def print_cores(over: Overbound) -> None:
    """Where the machine's CPU went during the over-bound phase, and who waited for a core."""
    elapsed, busy = over.elapsed_s or 1.0, over.busy_s
    rows = {**over.sched, "attackers": (over.attackers_cpu_s, over.attackers_wait_s)}
    rest = busy - sum(cpu for cpu, _ in rows.values())
    each = ", ".join(f"{name} {cpu / elapsed:.2f} / {w / elapsed:.2f}" for name, (cpu, w) in rows.items())
    print(
        f"  cores busy / threads waiting for a core, on average over {elapsed:.1f} s"
        f" (scheduler's accounting; {os.cpu_count()} cores, all of them {busy / elapsed:.2f} busy): "
        f"{each}, everything else on the machine {rest / elapsed:.2f}"
    )


def processes(endpoints: Endpoints, service: str) -> list[str]:
    """The names of ``service``'s processes: ``store``, or ``store-0``, ``store-1``, ..."""
    return [name for name in endpoints.services if re.fullmatch(rf"{service}(-[0-9]+)?", name)]


def failed_lookups(metrics_urls: list[str]) -> float:
    """Key lookups every store process answered NOT_FOUND (a key it does not know), from their
    request counters: what a wrong-key flood costs store (valid keys' lookups are not counted)."""
    total = 0.0
    for url in metrics_urls:
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            total += sum(
                sample.value
                for sample in family.samples
                if sample.name == "ferry_grpc_requests_total"
                and sample.labels.get("method", "").endswith("/LookupApiKey")
                and sample.labels.get("code") == "NOT_FOUND"
            )
    return total


def _get(connection: http.client.HTTPConnection, key: str) -> int:
    connection.request("GET", "/v1/models", headers={"authorization": f"Bearer {key}"})
    answer = connection.getresponse()
    answer.read()
    return answer.status


def wrong_key_flood(endpoints: Endpoints, valid_keys: list[str], sources: int, seconds: float) -> None:
    """Made-up keys from ``sources`` addresses (two threads each) while valid keys call once a second.

    Prints the failed lookups that reached store over the whole flood against the cap for that
    window (``lookup_cap``: its rate times the window, plus its burst), and their rate over the
    flood's second half, once the saved-up burst is spent, against the cap's rate.
    """
    url = urlsplit(endpoints.http_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    stores = [
        f"http://127.0.0.1:{endpoints.services[name]['metrics_port']}/metrics"
        for name in processes(endpoints, "store")
    ]
    deadline = time.monotonic() + seconds
    flood: Counter[int] = Counter()
    lock = threading.Lock()

    def attacker(source: str) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30, source_address=(source, 0))
        seen: Counter[int] = Counter()
        while time.monotonic() < deadline:
            seen[_get(connection, "made-up-" + secrets.token_hex(12))] += 1
        with lock:
            flood.update(seen)

    before = failed_lookups(stores)
    started = time.monotonic()
    threads = [
        threading.Thread(target=attacker, args=(f"127.0.0.{2 + n}",), daemon=True)
        for n in range(sources)
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    valid: Counter[int] = Counter()
    half: tuple[float, float] | None = None
    for key in valid_keys:  # one never-used valid key a second, from an address of its own
        time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
        connection = http.client.HTTPConnection(host, port, timeout=30, source_address=("127.0.0.200", 0))
        valid[_get(connection, key)] += 1
    if deadline - time.monotonic() > seconds / 2:  # the second half's start (valid keys done before)
        time.sleep(deadline - time.monotonic() - seconds / 2)
    if deadline - time.monotonic() > 1:
        half = (time.monotonic(), failed_lookups(stores))
    for thread in threads:
        thread.join()
    ended = time.monotonic()
    failed = failed_lookups(stores)
    elapsed = ended - started
    rate = sum(flood.values()) / elapsed
    cap_rate, cap_burst = lookup_cap(GatewaySettings().auth_failure_rate_per_s)
    print(
        f"wrong-key flood from {sources} addresses for {elapsed:.1f} s through"
        f" {len(processes(endpoints, 'gateway'))} gateway(s): {dict(flood)} ({rate:.0f}/s)"
    )
    print(f"  never-used valid keys from another address: {dict(valid)} (goal: all 200)")
    print(
        f"  failed key lookups reaching store: {failed - before:.0f} in {elapsed:.1f} s"
        f" = {(failed - before) / elapsed:.1f}/s; the cap for the window:"
        f" {cap_rate:g}/s x {elapsed:.1f} s + burst {cap_burst:g} = {cap_rate * elapsed + cap_burst:.0f}"
    )
    if half:
        steady = (failed - half[1]) / (ended - half[0])
        print(
            f"  over the second half ({ended - half[0]:.1f} s, the burst spent):"
            f" {steady:.1f}/s against the cap's rate of {cap_rate:g}/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the overload phase")
    parser.add_argument(
        "--clients", type=int, default=8, help="closed-loop clients measuring the sustainable rate"
    )
    parser.add_argument("--factor", type=float, default=3.0, help="overload rate, times the sustainable one")
    parser.add_argument("--overbound-clients", type=int, default=400, help="clients over the bound")
    parser.add_argument(
        "--attacker-processes", type=int, default=2, help="processes the clients over the bound run in"
    )
    parser.add_argument(
        "--attacker-nice",
        type=int,
        default=19,
        help="their niceness, in a session (autogroup) of their own: on one machine their own CPU then"
        " comes after the stack's, as it would on machines of their own (0: they compete with the"
        " stack as equals)",
    )
    parser.add_argument(
        "--attacker-connections",
        default="0,1",
        help="HTTP/2 connections per attacking process, comma-separated: the over-bound phase runs"
        " once per value. 0: one per client, as clients on hosts of their own have; 1: each process"
        " multiplexes its clients on one connection, as one gRPC channel does (Envoy lets 100 calls"
        " at once through a connection, devstack/envoy.py: the rest wait in the client)",
    )
    parser.add_argument(
        "--attackers-own-session",
        action="store_true",
        help="each attacking process in a session (autogroup) of its own at --attacker-nice, where"
        " the nice holds against the stack's processes (each of which leads a session): the attack"
        " then gets only the CPU the stack leaves, a far weaker attack than other machines would"
        " send; by default they share the benchmark's session, where their nice does not hold",
    )
    parser.add_argument(
        "--probe-priority",
        action="store_true",
        help="the over-bound phase's probe in a process whose autogroup is ahead of every other"
        " (needs CAP_SYS_NICE): as a client on a machine of its own, it never waits for a core, so"
        " its 429 latency is the stack's alone",
    )
    parser.add_argument(
        "--envoy-autogroup-nice",
        default="",
        help="Envoy's session (autogroup) at this nice, against the stack's other processes (each"
        " an equal group by default; below 0 needs CAP_SYS_NICE): what Envoy's priority trades"
        " between fast refusals and goodput. Comma-separated: the over-bound phase runs at each in"
        " turn (for example 0,-10), --rounds times, alternated in one stack",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="times the over-bound phase's shapes run, alternated"
    )
    parser.add_argument(
        "--probe-connections",
        type=int,
        default=50,
        help="connections the over-bound phase's probe (50 calls a second) takes in turn: at 50 each"
        " sends once a second, as clients that wait the Retry-After (1 s) of a refusal do; 1: one"
        " client sending 50 a second whatever it is told (session 10's probe), whose calls Envoy"
        " holds once it is refused past its share (devstack/refusal_hold.py)",
    )
    parser.add_argument(
        "--only-overbound",
        action="store_true",
        help="skip the open loop at --factor and the wrong-key flood (the sustainable rate stays)",
    )
    parser.add_argument(
        "--only-flood",
        action="store_true",
        help="only the wrong-key flood (for --seconds, at least 6 s): no predictions",
    )
    parser.add_argument(
        "--flood-sources", type=int, default=15, help="source addresses of the wrong-key flood"
    )
    parser.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway processes of the stack (FERRY_GATEWAYS): the caps hold for all of them together",
    )
    parser.add_argument(
        "--tolerance",
        default="2",
        help="FERRY_GATEWAY_PREDICT_LATENCY_TOLERANCE of the stack (the latency bound is opt-in; 0: off)",
    )
    args = parser.parse_args()
    # The stack's processes inherit this environment.
    os.environ["FERRY_GATEWAY_PREDICT_LATENCY_TOLERANCE"] = args.tolerance
    print(f"FERRY_GATEWAY_PREDICT_LATENCY_TOLERANCE={args.tolerance}")
    attackers = [
        Attackers(
            args.overbound_clients,
            args.attacker_processes,
            args.attacker_nice,
            int(connections),
            args.attackers_own_session,
        )
        for connections in args.attacker_connections.split(",")
    ]
    with local_stack("ferry-bench-overload-", args.gateways) as endpoints:
        group = Path(f"/proc/{endpoints.pids['envoy']}/autogroup")
        print(f"Envoy's session as started: {group.read_text().strip() if group.exists() else '-'}")
        if not args.only_flood:
            asyncio.run(
                run(
                    endpoints,
                    args.seconds,
                    args.clients,
                    args.factor,
                    attackers,
                    not args.only_overbound,
                    args.probe_priority,
                    [int(n) for n in args.envoy_autogroup_nice.split(",") if n.strip()],
                    args.rounds,
                    args.probe_connections,
                )
            )
        if args.only_overbound:
            return
        valid_keys = [asyncio.run(unthrottled_key(endpoints.grpc_target, ["read"])) for _ in range(5)]
        print(f"load (1 min) before the flood: {os.getloadavg()[0]:.2f}")
        wrong_key_flood(endpoints, valid_keys, args.flood_sources, max(args.seconds, len(valid_keys) + 1.0))
        print(f"load (1 min) after the flood: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
