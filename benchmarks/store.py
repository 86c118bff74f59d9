"""Store ingest benchmark: rows/s from JetStream to committed Postgres rows, and ingestion lag.

``python -m benchmarks.store`` starts its own nats-server and Postgres in a temporary folder (free
ports; it never touches a running ``ferry up``), migrates a database per measurement, and runs
store's real ``Ingestor`` on a durable consumer of its own:

* throughput: N records published beforehand, then the time until all N rows are committed —
  with store's path (binary COPY into a temporary table, one ``INSERT … SELECT … ON CONFLICT``
  per batch) and, on the same records, the row-at-a-time baseline (one ``INSERT … ON CONFLICT DO
  NOTHING`` transaction per record);
* lag: a separate process publishes at a steady rate (5,000 predictions/s by default, as gateways
  would) while ingest runs with store's default settings; each row's lag is the time from its
  prediction's ``create_time`` to the commit of its batch.

Besides wall time, each throughput row says how much CPU time each process spent per row (the
store process or processes, nats-server, Postgres; read from ``/proc``): on a machine shared with
other work, wall-clock rows/s swing with the load, CPU time per row much less; ``2-core est.`` is
what the same CPU cost per row would give on 2 idle cores (one store process cannot use more
than one). Not a test: nothing asserts a time. Prints a table with the ratio of the two write
paths.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext

from devstack.infra import Postgres, free_port, start_nats
from ferry.events.v1 import events_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common.ids import uuid7
from services.common.messaging import (
    EVENTS_STREAM,
    PREDICTION_BATCHES_SUBJECT,
    PREDICTIONS_SUBJECT,
    connect,
    ensure_streams,
)
from services.common.tasks import spawn
from services.common.tracing import setup_tracing
from services.store import codec
from services.store.ingest import Ingestor, Writer, tune_gc, write_batch
from services.store.migrate import migrate
from services.store.repositories import predictions
from services.store.settings import StoreSettings

TENANT = "bench"


def event(now_ns: int | None = None) -> events_pb2.PredictionRecorded:
    """One PredictionRecorded as a sync predict makes it: five classes, timing, a trace id."""
    made = prediction_pb2.Prediction(
        name=f"predictions/{uuid7()}",
        model="models/efficientnet-lite0",
        state=prediction_pb2.PREDICTION_STATE_SUCCEEDED,
        classes=[
            types_pb2.ClassScore(label=label, score=score, index=index)
            for label, score, index in [
                ("tiger cat", 0.39, 282),
                ("Egyptian cat", 0.36, 285),
                ("tabby", 0.17, 281),
                ("lynx", 0.02, 287),
                ("remote control", 0.01, 761),
            ]
        ],
        timing=types_pb2.Timing(decode_ms=6.1, queue_ms=2.0, inference_ms=27.3, total_ms=41.2, batch_size=4),
        trace_id=uuid.uuid4().hex,
    )
    made.create_time.FromNanoseconds(now_ns or time.time_ns())
    return events_pb2.PredictionRecorded(tenant=TENANT, prediction=made)


def record(now_ns: int | None = None) -> bytes:
    """One PredictionRecorded, serialized, as the jobs runner publishes it (one a message)."""
    return event(now_ns).SerializeToString()


def batch(size: int) -> bytes:
    """A PredictionsRecorded of ``size`` records, each with its request's traceparent, as the
    gateway publishes them."""
    records = [event() for _ in range(size)]
    for made in records:
        made.traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    return events_pb2.PredictionsRecorded(records=records).SerializeToString()


def headers(data: bytes) -> dict[str, str]:
    """A record's headers as a gateway sends them: its message id and its request's traceparent."""
    return {
        "Nats-Msg-Id": data[-40:].hex(),
        "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
    }


async def publish(js: JetStreamContext, count: int, rate: float = 0.0, per_message: int = 1) -> None:
    """Publishes ``count`` records, ``per_message`` a message (a batch when above 1), awaiting acks
    in windows; paced to ``rate`` records per second if set."""
    started = time.monotonic()
    window = 500 * per_message
    for first in range(0, count, window):
        if rate:
            await asyncio.sleep(max(0.0, started + first / rate - time.monotonic()))
        acks = []
        for at in range(first, min(first + window, count), per_message):
            size = min(per_message, count - at)
            subject = PREDICTIONS_SUBJECT if per_message == 1 else PREDICTION_BATCHES_SUBJECT
            data = record() if per_message == 1 else batch(size)
            acks.append(js.publish(subject, data, headers=headers(data)))
        await asyncio.gather(*acks)


def _publisher_process(nats_url: str, count: int, rate: float, per_message: int) -> None:
    """Runs in its own process, as gateways do, so publishing does not share ingest's event loop."""

    async def main() -> None:
        async with AsyncExitStack() as stack:
            _, js = await connect(nats_url, "bench-publisher", stack)
            await publish(js, count, rate, per_message)

    asyncio.run(main())


def as_store_runs(tracing: bool) -> None:
    """Sets this process up as store's runtime does: its tracer provider (no exporter, so spans are
    made but not recorded), ingest's GC.

    Without the provider each record's span is OpenTelemetry's no-op (no trace ids at all), which
    costs store less (``--no-tracing`` measures that).
    """
    if tracing:
        setup_tracing("ferry-store", "")
    tune_gc()


def _ingest_process(
    nats_url: str, database_url: str, consumer: str, batch: int, concurrency: int, tracing: bool
) -> None:
    """One store replica's ingest, in its own process, until terminated."""

    async def main() -> None:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=concurrency + 1)
        async with AsyncExitStack() as stack:
            _, js = await connect(nats_url, "bench-replica", stack)
            ingestor = Ingestor(js, pool, consumer, batch, 0.05, retry_delay_s=1.0)
            as_store_runs(tracing)
            for n in range(concurrency):
                spawn(stack, ingestor.run(await ingestor.subscribe(), n > 0), f"{consumer}-{n}")
            await asyncio.Event().wait()

    asyncio.run(main())


async def one_by_one(pool: asyncpg.Pool, rows: list[codec.PredictionRow]) -> int:
    """The baseline: one INSERT (and one transaction, one round trip) per record."""
    written = 0
    async with pool.acquire() as connection:
        for row in rows:
            written += await predictions.insert_one(connection, row)
    return written


async def committed(pool: asyncpg.Pool, count: int, poll_s: float = 0.05) -> int:
    """Returns how many rows are committed once at least ``count`` are (polled every ``poll_s``)."""
    while True:
        rows: int = await pool.fetchval("SELECT count(*) FROM predictions")
        if rows >= count:
            return rows
        await asyncio.sleep(poll_s)


_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) "; field 4 is fields[1]
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return int(fields[1]), (utime + stime + cutime + cstime) / _TICKS_PER_S


def cpu_by_process(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each root process and all its descendants ({} off Linux).

    Postgres' backends are children of the postmaster, store processes children of this one.
    """
    if not Path("/proc/self/stat").exists():
        return {}
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _proc_cpu(int(entry.name))) is not None:
            parents[int(entry.name)], cpu[int(entry.name)] = found
    totals = dict.fromkeys(roots, 0.0)
    for pid, seconds in cpu.items():
        ancestor = pid
        while ancestor > 1:
            for name, root in roots.items():
                if ancestor == root:
                    totals[name] += seconds
                    break
            else:
                ancestor = parents.get(ancestor, 0)
                continue
            break
    return totals


@dataclass
class Throughput:
    name: str
    rows: int
    seconds: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds spent during the run by each process group (store, nats-server, Postgres)."""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def cpu_us_per_row(self, name: str) -> float:
        return self.cpu_s.get(name, 0.0) / self.rows * 1e6

    def idle_estimate(self, processes: int, cores: int = 2) -> float:
        """Rows/s the measured CPU cost per row would allow on ``cores`` idle cores."""
        total = sum(self.cpu_s.values()) / self.rows
        store = self.cpu_s.get("store", 0.0) / self.rows
        if not total or not store:
            return 0.0
        return min(cores / total, processes / store)


class Bench:
    """Holds the benchmark's own nats-server and Postgres."""

    def __init__(
        self,
        js: JetStreamContext,
        postgres_uri: str,
        nats_url: str,
        concurrency: int,
        pids: dict[str, int] | None = None,
        tracing: bool = True,
        per_message: int = 1,
    ) -> None:
        self.tracing = tracing
        self.per_message = per_message
        self.concurrency = concurrency
        self.pids = pids or {}
        self.database_url = ""
        self.js = js
        self.postgres_uri = postgres_uri
        self.nats_url = nats_url

    @asynccontextmanager
    async def database(self) -> AsyncIterator[asyncpg.Pool]:
        """A fresh migrated database and a pool on it (dropped afterwards)."""
        name = f"bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(self.postgres_uri)
        await admin.execute(f'CREATE DATABASE "{name}"')
        self.database_url = self.postgres_uri.replace("/postgres?", f"/{name}?")
        pool = await asyncpg.create_pool(self.database_url, min_size=2, max_size=4)
        try:
            async with pool.acquire() as connection:
                await migrate(connection)
            yield pool
        finally:
            await pool.close()
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.close()

    @asynccontextmanager
    async def ingesting(
        self, pool: asyncpg.Pool, batch: int, max_wait_s: float, writer: Writer
    ) -> AsyncIterator[None]:
        """Store's Ingestor on a new durable consumer that starts at the stream's next message."""
        consumer = f"bench-{uuid.uuid4().hex[:8]}"
        ingestor = Ingestor(self.js, pool, consumer, batch, max_wait_s, retry_delay_s=1.0, writer=writer)
        async with AsyncExitStack() as stack:
            for n in range(self.concurrency):  # as store does: ingest_concurrency subscriptions
                spawn(stack, ingestor.run(await ingestor.subscribe(), n > 0), f"{consumer}-{n}")
            yield
        await self.js.delete_consumer(EVENTS_STREAM, consumer)

    async def throughput(self, name: str, count: int, batch: int, writer: Writer) -> Throughput:
        """Time to commit ``count`` records already waiting in the stream."""
        await self.js.purge_stream(EVENTS_STREAM)
        await publish(self.js, count, per_message=self.per_message)
        async with self.database() as pool:
            cpu = cpu_by_process(self.pids)
            started = time.perf_counter()
            async with self.ingesting(pool, batch, 0.05, writer):
                await committed(pool, count)
                elapsed = time.perf_counter() - started
                spent = cpu_by_process(self.pids)
        return Throughput(name, count, elapsed, {k: spent[k] - cpu[k] for k in spent})

    async def replicas(self, count: int, batch: int, processes: int) -> Throughput:
        """Rows/s of ``processes`` store ingest processes sharing the consumer, as replicas do.

        Timed from the first committed row to the last, so process start-up is left out.
        """
        await self.js.purge_stream(EVENTS_STREAM)
        await publish(self.js, count, per_message=self.per_message)
        consumer = f"bench-{uuid.uuid4().hex[:8]}"
        async with self.database() as pool:
            context = multiprocessing.get_context("spawn")
            args = (self.nats_url, self.database_url, consumer, batch, self.concurrency, self.tracing)
            workers = [context.Process(target=_ingest_process, args=args) for _ in range(processes)]
            for worker in workers:
                worker.start()
            try:
                first = await committed(pool, 1, poll_s=0.01)
                cpu = cpu_by_process(self.pids)
                started = time.perf_counter()
                await committed(pool, count)
                elapsed = time.perf_counter() - started
                spent = cpu_by_process(self.pids)
            finally:
                for worker in workers:
                    worker.terminate()
                    worker.join()
        await self.js.delete_consumer(EVENTS_STREAM, consumer)
        used = {k: spent[k] - cpu[k] for k in spent}
        return Throughput(f"COPY, {processes} store processes", count - first, elapsed, used)

    async def lag(self, rate: float, seconds: float) -> list[float]:
        """Each row's create_time → commit, while another process publishes at ``rate``/s."""
        defaults = StoreSettings(database_url="unused")
        lags: list[float] = []

        async def measured(pool: asyncpg.Pool, rows: list[codec.PredictionRow]) -> int:
            written = await write_batch(pool, rows)
            committed = time.time()
            lags.extend(committed - row.create_time.timestamp() for row in rows)
            return written

        count = int(rate * seconds)
        await self.js.purge_stream(EVENTS_STREAM)
        async with (
            self.database() as pool,
            self.ingesting(pool, defaults.ingest_batch_size, defaults.ingest_max_wait_s, measured),
        ):
            publisher = multiprocessing.get_context("spawn").Process(
                target=_publisher_process, args=(self.nats_url, count, rate, self.per_message)
            )
            publisher.start()
            while publisher.is_alive() or len(lags) < count:
                await asyncio.sleep(0.1)
                if not publisher.is_alive() and publisher.exitcode:
                    raise RuntimeError(f"publisher exited with {publisher.exitcode}")
        return lags


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


@dataclass
class Servers:
    """A nats-server (Ferry's streams created) and a Postgres of a benchmark's own."""

    js: JetStreamContext
    nats_url: str
    nats_pid: int
    postgres: Postgres


@asynccontextmanager
async def own_servers(prefix: str, client_name: str) -> AsyncIterator[Servers]:
    """Starts a nats-server and a Postgres in a temporary folder named ``prefix``..., connects to
    NATS as ``client_name``, and stops both (their data gone) when the block ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        nats_port = free_port()
        nats = start_nats(nats_port, root / "nats", root / "logs")
        postgres = Postgres(root / "pg")
        try:
            async with AsyncExitStack() as stack:
                nats_url = f"nats://127.0.0.1:{nats_port}"
                _, js = await connect(nats_url, client_name, stack)
                await ensure_streams(js)
                yield Servers(js, nats_url, nats.pid, postgres)
        finally:
            postgres.stop()
            nats.stop()


async def run(args: argparse.Namespace) -> None:
    async with own_servers("ferry-bench-store-", "bench-store") as servers:
        pids = {"store": os.getpid(), "nats": servers.nats_pid, "postgres": servers.postgres.pid}
        bench = Bench(
            servers.js,
            servers.postgres.uri,
            servers.nats_url,
            args.concurrency,
            pids,
            not args.no_tracing,
            args.per_message,
        )
        as_store_runs(bench.tracing)
        copy = await bench.throughput("COPY + INSERT … SELECT", args.rows, args.batch, write_batch)
        rows = await bench.throughput("row at a time", args.baseline_rows, args.batch, one_by_one)
        scaled = [await bench.replicas(args.rows, args.batch, n) for n in args.processes]
        lags = await bench.lag(args.rate, args.seconds)
    print(
        f"\nstore ingest, JetStream → committed rows ({os.cpu_count()} CPUs, batch {args.batch},"
        f" {args.concurrency} in flight, tracing {'off' if args.no_tracing else 'on'},"
        f" {args.per_message} records a message)"
    )
    print(
        f"{'write path':<30}{'rows':>8}{'seconds':>8}{'rows/s':>9}{'ratio':>7}"
        f"   CPU µs/row: {'store':>6}{'nats':>6}{'pg':>6}   2-core est."
    )
    for result, processes in ((copy, 1), *zip(scaled, args.processes, strict=True), (rows, 1)):
        ratio = result.rows_per_s / rows.rows_per_s
        cpu = "".join(f"{result.cpu_us_per_row(name):>6.1f}" for name in ("store", "nats", "postgres"))
        print(
            f"{result.name:<30}{result.rows:>8}{result.seconds:>8.2f}{result.rows_per_s:>9,.0f}{ratio:>6.1f}x"
            f"               {cpu}{result.idle_estimate(processes):>11,.0f}"
        )
    print(
        f"\ningestion lag at {args.rate:,.0f} predictions/s for {args.seconds:g} s ({len(lags)} rows,"
        " store's default batch settings)"
    )
    print(
        f"p50 {percentile(lags, 0.5) * 1000:.0f} ms   p99 {percentile(lags, 0.99) * 1000:.0f} ms"
        f"   max {max(lags) * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="records for the COPY path's throughput")
    parser.add_argument(
        "--baseline-rows", type=int, default=10_000, help="records for the row-at-a-time path"
    )
    parser.add_argument(
        "--per-message",
        type=int,
        default=1,
        help="records per NATS message: 1 as the jobs runner publishes, more for the gateway's batches",
    )
    parser.add_argument("--batch", type=int, default=2_000, help="ingest batch size for the throughput runs")
    parser.add_argument(
        "--rate", type=float, default=5_000, help="predictions/s published during the lag run"
    )
    parser.add_argument("--seconds", type=float, default=10, help="how long the lag run publishes")
    parser.add_argument(
        "--processes",
        type=int,
        nargs="*",
        default=[2],
        help="also measure this many store processes (replicas)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=StoreSettings(database_url="unused").ingest_concurrency,
        help="batches in flight (store's FERRY_STORE_INGEST_CONCURRENCY)",
    )
    parser.add_argument(
        "--no-tracing",
        action="store_true",
        help="run store without a tracer provider (each record's span a no-op), unlike the service",
    )
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.ERROR)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
