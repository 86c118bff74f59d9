"""Reading photo-sized objects from the JetStream Object Store: what it costs nats-server (issue #17).

A bulk job's runner reads each item's image from the Object Store (a claim check) while it runs
it, and every tenant shares the nats-server that answers. ``python -m benchmarks.object_reads``
starts a nats-server of its own (on a free loopback port, in a temporary folder, with the stack's
``GOMEMLIMIT``), stores ``--objects`` (200) objects of ``--mb`` (0.95) MB of random bytes (photos
do not compress either) with ``objects.put`` as the upload lane does, then reads them all,
``--concurrency`` (4) at a time as a runner does, once per reader per round (``--rounds``,
alternated), each round after ``--settle-s`` seconds so that nats-server's block cache is cold
again, as it is when a job starts after its upload. For each reader it prints the wall time and
nats-server's CPU (user and kernel, from /proc) and minor page faults per MB read, and the ratio
of Ferry's read (``services.common.objects.read``) to nats.py's ``ObjectStore.get`` (an ordered
push consumer per object) measured in the same run.

Run it from another checkout's folder (``PYTHONPATH=<checkout> python <this file>``) to measure
that checkout's ``objects.read`` the same way. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig
from nats.js.object_store import ObjectStore

from devstack.infra import free_port, start_nats
from devstack.settings import StackSettings
from services.common import objects

BUCKET = "bench_object_reads"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Reader = Callable[[JetStreamContext, ObjectStore, str], Awaitable[bytes]]


async def ferry_read(js: JetStreamContext, store: ObjectStore, name: str) -> bytes:
    return await objects.read(js, BUCKET, store, name)


async def natspy_get(js: JetStreamContext, store: ObjectStore, name: str) -> bytes:
    return (await store.get(name)).data or b""


READERS: dict[str, Reader] = {"ferry objects.read": ferry_read, "nats.py get": natspy_get}


@dataclass(frozen=True)
class Usage:
    user_s: float
    kernel_s: float
    minor_faults: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command's name: minflt is field 10, utime 14, stime 15 (1-based, man 5 proc).
        return cls(int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS, int(fields[7]))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.user_s - other.user_s, self.kernel_s - other.kernel_s, self.minor_faults - other.minor_faults
        )


@dataclass(frozen=True)
class Round:
    wall_s: float
    nats: Usage
    megabytes: float


async def store_objects(js: JetStreamContext, count: int, size: int) -> list[str]:
    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    names = [f"photo-{i:04d}.jpg" for i in range(count)]
    for name in names:
        await objects.put(js, BUCKET, name, one(os.urandom(size)), chunk_bytes=1024 * 1024, replace=False)
    return names


async def read_all(
    reader: Reader, js: JetStreamContext, store: ObjectStore, names: list[str], concurrency: int, pid: int
) -> Round:
    queue = list(reversed(names))
    read_bytes = 0

    async def worker() -> None:
        nonlocal read_bytes
        while queue:
            data = await reader(js, store, queue.pop())
            read_bytes += len(data)

    before, started = Usage.of(pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Round(time.perf_counter() - started, Usage.of(pid) - before, read_bytes / 1e6)


def summary(rounds: list[Round]) -> str:
    mb = rounds[0].megabytes

    def median(values: list[float]) -> float:
        return statistics.median(values)

    return (
        f"{median([r.wall_s for r in rounds]):.2f} s for {mb:.0f} MB; nats-server per MB: "
        f"{1000 * median([r.nats.user_s / mb for r in rounds]):.2f} ms user, "
        f"{1000 * median([r.nats.kernel_s / mb for r in rounds]):.2f} ms kernel, "
        f"{median([r.nats.minor_faults / mb for r in rounds]):.0f} page faults"
    )


async def run(args: argparse.Namespace, url: str, pid: int) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        store = await js.create_object_store(BUCKET, config=ObjectStoreConfig(bucket=BUCKET))
        names = await store_objects(js, args.objects, int(args.mb * 1e6))
        print(f"stored {len(names)} objects of {args.mb} MB", flush=True)
        results: dict[str, list[Round]] = {name: [] for name in READERS}
        for round_number in range(args.rounds):
            for name, reader in READERS.items():
                await asyncio.sleep(args.settle_s)
                done = await read_all(reader, js, store, names, args.concurrency, pid)
                results[name].append(done)
                cpu_ms = 1000 * (done.nats.user_s + done.nats.kernel_s) / done.megabytes
                print(
                    f"  round {round_number + 1}, {name}: {done.wall_s:.2f} s, nats-server "
                    f"{cpu_ms:.2f} ms CPU/MB, {done.nats.minor_faults} page faults",
                    flush=True,
                )
        for name, rounds in results.items():
            print(f"{name}: {summary(rounds)}")
        ferry, peer = results["ferry objects.read"], results["nats.py get"]

        def cpu(rounds: list[Round]) -> float:
            return statistics.median([r.nats.user_s + r.nats.kernel_s for r in rounds])

        wall = statistics.median([r.wall_s for r in ferry]) / statistics.median([r.wall_s for r in peer])
        print(
            f"ferry / nats.py get: wall {wall:.2f}x, nats-server CPU {cpu(ferry) / cpu(peer):.2f}x "
            f"(medians of {args.rounds} rounds)"
        )
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--mb", type=float, default=0.95, help="each object's size, in MB")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=12.0, help="pause before each read (cache expiry)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-object-reads-") as folder:
        port = free_port()
        memory_limit = StackSettings().nats_memory_limit
        process = start_nats(port, Path(folder) / "nats", Path(folder), memory_limit=memory_limit)
        print(f"nats-server pid {process.popen.pid}, GOMEMLIMIT {memory_limit}", flush=True)
        try:
            asyncio.run(run(args, f"nats://127.0.0.1:{port}", process.popen.pid))
        finally:
            with contextlib.suppress(Exception):
                process.stop()


if __name__ == "__main__":
    main()
