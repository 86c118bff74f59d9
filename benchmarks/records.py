"""The record path alone: CPU per prediction record of the gateway's publishing, nats-server, store's
ingest and Postgres, one record a message against batches, at the rates a serving stack sees.

``python -m benchmarks.records [--rate 60 300] [--seconds 10] [--burst 4]`` starts
its own nats-server and Postgres in a temporary folder. For each rate and each way of recording,
a store ingest process (store's real ``Ingestor`` with store's default settings) runs against a
fresh database while this process records ``rate`` predictions a second for ``--seconds``, in
bursts of ``--burst`` (inference answers a batch of requests at once), each record awaited until
JetStream acknowledged it, as a request is answered only then:

* ``one a message``: the gateway's path before batches, ``Publisher.publish`` of one
  ``PredictionRecorded`` per prediction (with the write of every fetch through the staging table);
* ``batched``: ``RecordBatcher`` (one ``PredictionsRecorded`` per group commit), the write of every
  fetch still through the staging table;
* ``batched, small writes in one statement``: as the services run now.

Then, once every row is committed, it prints the CPU each process spent per record (this process:
the gateway's share; ``/proc`` for the others) and the records per message. The clients of a real
stack, Envoy and inference are left out, so the figures hold on a busy machine better than a whole
stack's. Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import asyncpg
from nats.js import JetStreamContext

from benchmarks.cpu import load_average, own_cpu_seconds
from benchmarks.store import Bench, as_store_runs, committed, cpu_by_process, event, own_servers
from ferry.events.v1 import events_pb2
from services.common.messaging import EVENTS_STREAM, PREDICTIONS_SUBJECT, connect
from services.common.publisher import Publisher
from services.common.tasks import spawn
from services.gateway.record_batches import RecordBatcher
from services.store.ingest import Ingestor
from services.store.repositories import predictions
from services.store.settings import StoreSettings

WAYS = ("one a message", "batched", "batched, small writes in one statement")


def _ingest_process(nats_url: str, database_url: str, consumer: str, small_writes: bool) -> None:
    """Store's ingest with its default settings, in a process of its own, until terminated."""
    if not small_writes:
        predictions.SMALL_BATCH = 0  # every write through the staging table, as before

    async def main() -> None:
        s = StoreSettings(database_url=database_url)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=s.ingest_concurrency + 1)
        async with AsyncExitStack() as stack:
            _, js = await connect(nats_url, "bench-store", stack)
            ingestor = Ingestor(js, pool, consumer, s.ingest_batch_size, s.ingest_max_wait_s, 1.0)
            as_store_runs(tracing=True)
            for n in range(s.ingest_concurrency):
                spawn(stack, ingestor.run(await ingestor.subscribe(), n > 0), f"{consumer}-{n}")
            await asyncio.Event().wait()

    asyncio.run(main())


def recorder(way: str, js: JetStreamContext) -> Callable[[events_pb2.PredictionRecorded], Awaitable[None]]:
    """How the gateway records one prediction, awaiting JetStream's acknowledgement."""
    publisher = Publisher(js, budget_s=10.0)
    if way == WAYS[0]:
        return lambda record: publisher.publish(
            PREDICTIONS_SUBJECT, record, record.prediction.name.removeprefix("predictions/")
        )
    return RecordBatcher(publisher, max_records=256, max_bytes=768 * 1024).record


async def paced(record: Callable[[events_pb2.PredictionRecorded], Awaitable[None]], rate: float,
                seconds: float, burst: int) -> int:  # fmt: skip
    """Records ``rate`` predictions a second for ``seconds`` in bursts; returns how many."""
    started = time.monotonic()
    count, pending = int(rate * seconds) // burst * burst, set()
    for first in range(0, count, burst):
        await asyncio.sleep(max(0.0, started + first / rate - time.monotonic()))
        for _ in range(burst):
            task = asyncio.create_task(record(event()))
            pending.add(task)
            task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return count


async def measure(
    bench: Bench, pids: dict[str, int], way: str, rate: float, seconds: float, burst: int
) -> str:
    """One row: CPU µs per record of each process, and records per message."""
    await bench.js.purge_stream(EVENTS_STREAM)
    async with bench.database() as pool:
        consumer = f"bench-{uuid.uuid4().hex[:8]}"
        store = multiprocessing.get_context("spawn").Process(
            target=_ingest_process, args=(bench.nats_url, bench.database_url, consumer, way == WAYS[2])
        )
        store.start()
        try:
            await asyncio.sleep(3.0)  # start-up (imports, subscribe) is not the records' cost
            roots = {**pids, "store": store.pid or 0}
            before, gateway_before = cpu_by_process(roots), own_cpu_seconds()
            count = await paced(recorder(way, bench.js), rate, seconds, burst)
            gateway = own_cpu_seconds() - gateway_before
            await committed(pool, count)
            after = cpu_by_process(roots)
            messages = (await bench.js.stream_info(EVENTS_STREAM)).state.messages
        finally:
            store.terminate()
            store.join()
        await bench.js.delete_consumer(EVENTS_STREAM, consumer)
    spent = {"gateway": gateway} | {name: after[name] - before[name] for name in roots}
    cells = "".join(
        f"{spent[name] * 1e6 / count:>10.0f}" for name in ("gateway", "nats", "store", "postgres")
    )
    total = sum(spent.values()) * 1e6 / count
    return f"{rate:>6.0f} {way:<40}{count / messages:>8.1f}{cells}{total:>10.0f}"


async def run(args: argparse.Namespace) -> None:
    async with own_servers("ferry-bench-records-", "bench-gateway") as servers:
        as_store_runs(tracing=True)  # tracing as store runs it: spans made (trace ids), not recorded
        bench = Bench(servers.js, servers.postgres.uri, servers.nats_url, concurrency=2)
        pids = {"nats": servers.nats_pid, "postgres": servers.postgres.pid}
        print(f"{'rate':>6} {'way':<40}{'rec/msg':>8}" + "".join(
            f"{name:>10}" for name in ("gateway", "nats", "store", "postgres", "total")
        ) + "   (CPU µs per record)", flush=True)  # fmt: skip
        for rate in args.rate:
            for way in WAYS:
                print(await measure(bench, pids, way, rate, args.seconds, args.burst), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, nargs="+", default=[60.0, 300.0], help="predictions a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each row records")
    parser.add_argument(
        "--burst", type=int, default=4, help="predictions answered at once (an inference batch)"
    )
    args = parser.parse_args()
    print(f"record path, {os.cpu_count()} CPUs; /proc/loadavg {load_average()}", flush=True)
    asyncio.run(run(args))
    print(f"/proc/loadavg {load_average()}")


if __name__ == "__main__":
    main()
