"""Memory of concurrent downloads of one large job result file (issue #17), and whether they all end.

``python -m benchmarks.result_downloads --downloads 8`` starts a nats-server in a temporary folder
(with its monitoring port), stores a result file of ``--lines`` (10,000) items at top_k 100 (about
27 MB; 54 MB as the JSON lines of before session 14) in the Object Store bucket the gateway uses,
and reads it ``--downloads`` times at once through the gateway's ``JobResults.read`` in this
process, each reader pausing ``--pause-ms`` (1) every 50 results, as a client taking them. It prints
this process's RSS before and at its peak (sampled every 10 ms), the time taken, how many downloads
ended whole, and what NATS saw: the most bytes nats-server held for this process's connection
waiting to be read (``/connz`` ``pending_bytes``: what a reader that does not pace NATS lets pile
up), its slow-consumer warnings, the client's errors and disconnections, and the consumers left on
the bucket's stream afterwards.

``--stack`` does the same through a whole local stack (``ferry up``'s processes on free ports): a
job of one photo run to its end, its result file then replaced by the large one (written directly
into the Object Store), and ``--downloads`` clients calling ``GetJobResults`` through Envoy at
once, each from a thread of this process. It prints the gateways' and NATS's RSS before and at
their peak (sampled every 20 ms) instead of this process's.

``--build`` measures the writing instead (issue #17, session 12): it starts a nats-server the same
way and has the jobs service's ``ResultFiles.write`` (the gateway's ``JobResults.write`` before
session 13) build the result file of a finished job of
``--lines`` (10,000) records at top_k 100 in this process, store stood in for by pages of records
made as they are asked for (as a store's gRPC answer arrives: a page at a time). It prints this
process's RSS before and at its peak (sampled every 10 ms) while the file is built and stored, the
file's size and chunks as stored, and the builder's largest piece where the checkout keeps one.

``--build --stack`` measures what the build costs the other tenants (issue #17, session 13): a whole
local stack, a finished job of ``--lines`` (10,000) records at top_k 100 put straight into store
(the job recorded through store's CreateJob, its records published to the records stream as a
runner would), then another tenant's ``GetModel`` called in a loop (``benchmarks.bulk``'s probe, a
process of its own) for ``--quiet-s`` (10) before the first ``GetJobResults`` of the job, which
builds its file, and while it does. It prints the time to the first line (the build), the whole
download, the peak RSS of gateway, jobs and NATS and their CPU seconds during the build and during
the download, and the probe's p50/p99 quiet against during the build (with their ratio) and during
the download. Whichever service builds the file (the gateway before session 13, the
jobs service since), the call goes through Envoy the same way, so two checkouts compare as is.

Run it from two checkouts, alternated, to compare their reading (or writing: run this file from a
copy of the other checkout, ``git archive main | tar -x -C DIR``, since main's has no ``--build``).
Not a test: nothing here asserts; figures depend on the machine and its load (printed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js.object_store import OBJ_STREAM_TEMPLATE

from devstack.infra import ManagedProcess, free_port, nats_command, nats_environment, wait_for_port
from ferry.jobs.v1 import job_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from ferry.types.v1 import types_pb2
from services.common.result_stores import BUCKET, result_store
from services.gateway.job_results import JobResults
from services.jobs.result_files import ResultFiles, object_name, result_of, result_record

MIB = 2**20


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident bytes of ``pid`` (this process by default); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Peaks(threading.Thread):
    """Samples ``probes`` (name: a function giving a number) every ``every_s`` until ``done`` is
    set, keeping each one's first value and its highest."""

    def __init__(self, probes: dict[str, Callable[[], int]], every_s: float) -> None:
        super().__init__(daemon=True)
        self._probes, self._every_s = probes, every_s
        self.before = {name: probe() for name, probe in probes.items()}
        self.peak = dict(self.before)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self._every_s):
            for name, probe in self._probes.items():
                with contextlib.suppress(Exception):  # a late monitoring answer: sampled next time
                    self.peak[name] = max(self.peak[name], probe())


def a_record(job: str) -> prediction_pb2.Prediction:
    """A job item's record at top_k 100 (its result line is about 5.4 KB)."""
    classes = [types_pb2.ClassScore(label=f"label number {k}", score=k / 1000, index=k) for k in range(100)]
    record = prediction_pb2.Prediction(
        name=f"predictions/{uuid.uuid4()}", job=job, state=prediction_pb2.PREDICTION_STATE_SUCCEEDED
    )
    record.classes.extend(classes)
    return record


def the_file(lines: int, job: str) -> bytes:
    """A result file of ``lines`` records at top_k 100 (about 5.4 KB a record)."""
    return result_record(result_of(a_record(job))) * lines


class _Pages:
    """What store answers for a finished job of ``items`` records: pages of records made as asked
    for, as a gRPC answer is read, so this process holds no more than the builder asks for."""

    def __init__(self, job: job_pb2.Job, items: int) -> None:
        self._job = job
        self._items = items
        self._record = a_record(job.name)

    async def list_predictions(
        self, tenant: str, request: prediction_service_pb2.ListPredictionsRequest
    ) -> prediction_service_pb2.ListPredictionsResponse:
        start = int(request.page_token or 0)
        end = min(start + request.page_size, self._items)
        page = prediction_service_pb2.ListPredictionsResponse(
            next_page_token=str(end) if end < self._items else ""
        )
        for index in range(start, end):
            record = page.predictions.add()
            record.CopyFrom(self._record)
            record.item_index = index
        return prediction_service_pb2.ListPredictionsResponse.FromString(page.SerializeToString())

    async def get_job(self, tenant: str, name: str) -> job_pb2.Job:
        return self._job


async def build(lines: int, folder: Path) -> None:
    """The peak RSS of this process while ``JobResults.write`` builds and stores a new result file."""
    server, port, _ = start_monitored_nats(folder)
    try:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", name="result-build")
        js = nc.jetstream()
        store = result_store("", js)
        await store.exists("none")  # the bucket, created before the measure
        job = job_pb2.Job(name=f"jobs/{uuid.uuid4()}", state=job_pb2.JOB_STATE_SUCCEEDED, items_total=lines)
        results = ResultFiles(_Pages(job, lines), store)
        peaks = Peaks({"rss": rss_bytes, "nats_rss": lambda: rss_bytes(server.pid)}, 0.01)
        peaks.start()
        started = time.perf_counter()
        name = (await results.write("acme", job.name)).name
        took = time.perf_counter() - started
        peaks.done.set()
        peaks.join()
        info = await (await js.object_store(BUCKET)).get_info(name)
        largest = getattr(results, "largest_piece", None)
        held = f"{largest / MIB:.1f} MB" if largest is not None else "not kept by this checkout"
        print(
            f"built {name}: {(info.size or 0) / 1e6:.1f} MB in {info.chunks} chunks, {lines} lines, in "
            f"{took:.1f} s; checkout {Path.cwd()}\n"
            f"RSS {peaks.before['rss'] / MIB:.0f} -> peak {peaks.peak['rss'] / MIB:.0f} MB "
            f"(+{(peaks.peak['rss'] - peaks.before['rss']) / MIB:.0f} MB); nats-server "
            f"{peaks.before['nats_rss'] / MIB:.0f} -> {peaks.peak['nats_rss'] / MIB:.0f} MB; "
            f"the builder's largest piece: {held}"
        )
        await nc.close()
    finally:
        server.stop()


class NatsSeen:
    """What NATS saw of a client connection: its errors and disconnections (callbacks to pass to
    ``nats.connect``), and the slow-consumer warnings in nats-server's log."""

    def __init__(self, log: Path | None = None) -> None:
        self.errors: list[str] = []
        self.disconnects = 0
        self._log = log
        self._log_from = log.stat().st_size if log and log.exists() else 0

    async def error(self, err: Exception) -> None:
        self.errors.append(f"{type(err).__name__}: {err}")

    async def disconnected(self) -> None:
        self.disconnects += 1

    def slow_consumer_lines(self) -> list[str]:
        if self._log is None or not self._log.exists():
            return []
        with self._log.open("rb") as f:
            f.seek(self._log_from)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if "Slow Consumer" in line]

    def report(self) -> str:
        slow = self.slow_consumer_lines()
        kinds = sorted({e.split(":")[0] for e in self.errors})
        lines = [
            f"NATS: {len(slow)} slow-consumer warnings, {self.disconnects} disconnections, "
            f"{len(self.errors)} client errors {kinds}"
        ]
        lines += [f"  server: {line}" for line in slow[:3]]
        lines += [f"  client: {err}" for err in self.errors[:3]]
        return "\n".join(lines)


async def consumers_left(js: nats.js.JetStreamContext) -> int:
    """Consumers on the result files' stream."""
    info = await js.stream_info(OBJ_STREAM_TEMPLATE.format(bucket=BUCKET))
    return info.state.consumer_count


def pending_bytes(monitor_port: int, name: str) -> int:
    """Bytes nats-server holds for the connection named ``name``, not yet read by it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/connz?limit=1024", timeout=2) as answer:
        connz = json.load(answer)
    return max((c.get("pending_bytes", 0) for c in connz["connections"] if c.get("name") == name), default=0)


def start_monitored_nats(folder: Path) -> tuple[ManagedProcess, int, int]:
    """nats-server as the stack runs it, with its monitoring port too; (process, port, monitoring port)."""
    port, monitor = free_port(), free_port()
    argv = nats_command(port, folder / "store")
    config = Path(argv[-1])
    config.write_text(config.read_text() + f'http: "127.0.0.1:{monitor}"\n')
    process = ManagedProcess.start("nats", argv, folder / "logs", nats_environment("off"))
    wait_for_port("127.0.0.1", port, timeout_s=20, process=process)
    return process, port, monitor


async def in_process(downloads: int, lines: int, pause_ms: float, folder: Path) -> None:
    server, port, monitor = start_monitored_nats(folder)
    try:
        seen = NatsSeen(server.log_path)
        nc = await nats.connect(
            f"nats://127.0.0.1:{port}",
            name="result-downloads",
            error_cb=seen.error,
            disconnected_cb=seen.disconnected,
            max_reconnect_attempts=-1,
        )
        js = nc.jetstream()
        store = result_store("", js)
        job = job_pb2.Job(name=f"jobs/{uuid.uuid4()}", state=job_pb2.JOB_STATE_SUCCEEDED, items_total=lines)
        data = the_file(lines, job.name)
        await store.put(object_name(job), data)
        print(f"file: {len(data) / 1e6:.1f} MB, {lines} lines; checkout {Path.cwd()}")
        del data

        async def stored(tenant: str, name: str) -> str:  # the job queue's answer: the file exists
            return object_name(job)

        results = JobResults(stored, store)

        async def download() -> int | str:
            count = 0
            try:
                async for _ in results.read("acme", job.name):
                    count += 1
                    if count % 50 == 0:
                        await asyncio.sleep(pause_ms / 1000)
            except Exception as err:
                return f"{type(err).__name__} after {count} lines: {err}"
            return count

        probes: dict[str, Callable[[], int]] = {
            "rss": rss_bytes,
            "nats_rss": lambda: rss_bytes(server.pid),
            "pending": lambda: pending_bytes(monitor, "result-downloads"),
        }
        peaks = Peaks(probes, 0.01)
        peaks.start()
        started = time.perf_counter()
        ended = await asyncio.gather(*(download() for _ in range(downloads)))
        took = time.perf_counter() - started
        peaks.done.set()
        peaks.join()
        whole = sum(1 for e in ended if e == lines)
        print(
            f"{downloads} downloads: {whole} whole, RSS {peaks.before['rss'] / MIB:.0f} -> peak "
            f"{peaks.peak['rss'] / MIB:.0f} MB in {took:.1f} s; nats-server "
            f"{peaks.before['nats_rss'] / MIB:.0f} -> {peaks.peak['nats_rss'] / MIB:.0f} MB; most bytes "
            "held for the connection "
            f"{peaks.peak['pending'] / MIB:.1f} MB"
        )
        for failure in sorted({str(e) for e in ended if e != lines})[:3]:
            print(f"  failed: {failure}")
        await asyncio.sleep(1)  # what a finished read leaves behind, not what NATS removes later
        print(seen.report())
        print(f"consumers left on the stream 1 s after: {await consumers_left(js)}")
        await nc.close()
    finally:
        server.stop()


def through_stack(downloads: int, lines: int, folder: Path) -> None:
    # Imported here: the in-process case needs none of the stack.
    import grpc

    from benchmarks.bulk import rss_bytes as tree_rss
    from devstack.settings import StackSettings
    from devstack.stack import LocalStack
    from ferry_client import FerryClient
    from ferry_client.client import FerryError

    stack = LocalStack(StackSettings(state_dir=folder / "stack", http_port=free_port(), free_ports=True))
    try:
        endpoints = stack.start()
        with FerryClient(endpoints.grpc_target, endpoints.dev_api_key, timeout_s=600) as ferry:
            job = ferry.wait_job(ferry.create_job([_a_photo()], top_k=5).name, timeout_s=300)
            list(ferry.job_results(job.name))  # the gateway writes its (small) file; replaced below
            data = the_file(lines, job.name)
            written = asyncio.run(_replace(endpoints.nats_url, object_name(job), data))
            print(f"file: {written / 1e6:.1f} MB, {lines} lines, of {job.name}; checkout {Path.cwd()}")
            del data
            ended: list[int | str] = []

            def download() -> None:
                count = 0
                try:
                    with FerryClient(endpoints.grpc_target, endpoints.dev_api_key, timeout_s=600) as client:
                        for _ in client.job_results(job.name):
                            count += 1
                except (FerryError, grpc.RpcError) as err:
                    ended.append(f"{type(err).__name__} after {count} lines: {err}")
                    return
                ended.append(count)

            seen = NatsSeen(Path(endpoints.logs_dir) / "nats.log")  # the gateways' connections' warnings
            gateways = {name: pid for name, pid in endpoints.pids.items() if name.startswith("gateway")}
            probes: dict[str, Callable[[], int]] = {
                name: (lambda pid=pid: tree_rss(pid)) for name, pid in gateways.items()
            }
            probes["nats"] = lambda: tree_rss(endpoints.pids["nats"])
            threads = [threading.Thread(target=download) for _ in range(downloads)]
            peaks = Peaks(probes, 0.02)
            peaks.start()
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            took = time.perf_counter() - started
            peaks.done.set()
            peaks.join()
            whole = sum(1 for e in ended if e == lines)
            memory = ", ".join(
                f"{name} {peaks.before[name] / MIB:.0f} -> {peaks.peak[name] / MIB:.0f} MB" for name in probes
            )
            print(f"{downloads} downloads through Envoy: {whole} whole in {took:.1f} s; peak RSS: {memory}")
            for failure in sorted({str(e) for e in ended if e != lines})[:3]:
                print(f"  failed: {failure}")
            time.sleep(1)
            print(f"consumers left on the stream 1 s after: {asyncio.run(_consumers(endpoints.nats_url))}")
            slow = seen.slow_consumer_lines()
            print(f"NATS: {len(slow)} slow-consumer warnings (the gateways' connections)")
            for line in slow[:3]:
                print(f"  server: {line}")
    finally:
        stack.stop()


def _a_photo() -> bytes:
    import io

    from PIL import Image
    from skimage import data as skimage_data

    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buffer, format="JPEG")
    return buffer.getvalue()


async def _replace(url: str, name: str, data: bytes) -> int:
    nc = await nats.connect(url)
    try:
        await result_store("", nc.jetstream()).put(name, data)
    finally:
        await nc.close()
    return len(data)


async def _consumers(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return await consumers_left(nc.jetstream())
    finally:
        await nc.close()


def build_through_stack(lines: int, folder: Path, quiet_s: float) -> None:
    """Another tenant's GetModel p50/p99 quiet and during the build of a new result file."""
    from benchmarks.bulk import Watch
    from benchmarks.bulk import rss_bytes as tree_rss
    from devstack.settings import StackSettings
    from devstack.stack import LocalStack
    from ferry_client import FerryClient

    stack = LocalStack(StackSettings(state_dir=folder / "stack", http_port=free_port(), free_ports=True))
    try:
        endpoints = stack.start()
        store = f"127.0.0.1:{endpoints.services['store']['grpc_port']}"
        made = time.perf_counter()
        job = asyncio.run(_finished_job(endpoints.nats_url, store, lines))
        made = time.perf_counter() - made
        print(f"{job} finished with {lines} records in {made:.1f} s; checkout {Path.cwd()}")
        watched = {n: p for n, p in endpoints.pids.items() if n.startswith(("gateway", "jobs", "nats"))}
        probes: dict[str, Callable[[], int]] = {
            name: (lambda pid=pid: tree_rss(pid)) for name, pid in watched.items()
        }
        peaks = Peaks(probes, 0.02)
        with (
            FerryClient(endpoints.grpc_target, endpoints.dev_api_key, timeout_s=600) as ferry,
            Watch(endpoints.pids, endpoints.grpc_target, endpoints.dev_api_key) as watch,
        ):
            time.sleep(quiet_s)
            watch.mark("quiet")
            peaks.start()
            cpu = [{n: cpu_s(p) for n, p in watched.items()}]
            started = time.perf_counter()
            results = ferry.job_results(job)
            next(results)  # the file is built before its first line is read
            built = time.perf_counter() - started
            watch.mark("build")
            cpu.append({n: cpu_s(p) for n, p in watched.items()})
            count = 1 + sum(1 for _ in results)
            took = time.perf_counter() - started
            watch.mark("download")
            cpu.append({n: cpu_s(p) for n, p in watched.items()})
            peaks.done.set()
            peaks.join()
        quiet, during = watch.during("quiet"), watch.during("build")
        memory = ", ".join(
            f"{n} {peaks.before[n] / MIB:.0f} -> {peaks.peak[n] / MIB:.0f} MB" for n in watched
        )
        print(
            f"first line after {built:.1f} s (the build); {count} lines in {took:.1f} s; peak RSS: {memory}"
        )
        for phase, (before, after) in (("build", cpu[:2]), ("download", cpu[1:])):
            used = ", ".join(f"{n} {after[n] - before[n]:.1f}" for n in watched)
            print(f"CPU seconds during the {phase}: {used}")
        print(watch.report("build", f"{len(quiet)} calls quiet, {len(during)} during the build"))
        ratio = _p99(during) / _p99(quiet) if quiet and during else float("nan")
        downloading = watch.during("download")
        print(
            f"other tenant's GetModel p50/p99: quiet {_spread_ms(quiet)}, during the build "
            f"{_spread_ms(during)}: p99 x{ratio:.2f}; during the download {_spread_ms(downloading)}"
        )
    finally:
        stack.stop()


def _spread_ms(values: list[float]) -> str:
    """p50/p99, as ``benchmarks.bulk``'s report computes them."""
    return f"{statistics.median(values or [0.0]):.1f}/{_p99(values):.1f} ms"


def _p99(values: list[float]) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _finished_job(nats_url: str, store_target: str, lines: int) -> str:
    """A finished job of the dev key's tenant with ``lines`` records at top_k 100, put into store
    as the runners would (its records published to the records stream); returns its name."""
    import grpc

    from ferry.events.v1 import events_pb2
    from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
    from services.common import messaging
    from services.store.settings import StoreSettings

    tenant = StoreSettings.model_fields["dev_tenant"].default
    job = job_pb2.Job(name=f"jobs/{uuid.uuid4()}", model="models/efficientnet-lite0", items_total=lines)
    job.top_k, job.state = 100, job_pb2.JOB_STATE_QUEUED
    async with grpc.aio.insecure_channel(store_target) as channel:
        stub = store_service_pb2_grpc.StoreServiceStub(channel)
        await stub.CreateJob(store_service_pb2.CreateJobRequest(tenant=tenant, job=job), timeout=30)
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            record = a_record(job.name)
            record.model = job.model
            for first in range(0, lines, 100):
                batch = events_pb2.PredictionsRecorded()
                for index in range(first, min(first + 100, lines)):
                    one = batch.records.add(tenant=tenant)
                    one.prediction.CopyFrom(record)
                    one.prediction.name = f"predictions/{uuid.uuid4()}"
                    one.prediction.item_index = index
                await js.publish(messaging.PREDICTION_BATCHES_SUBJECT, batch.SerializeToString(), timeout=30)
        finally:
            await nc.close()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            answer = await stub.GetJob(
                store_service_pb2.GetJobRequest(tenant=tenant, id=job.name.removeprefix("jobs/")), timeout=30
            )
            if answer.job.state == job_pb2.JOB_STATE_SUCCEEDED:
                return job.name
            await asyncio.sleep(1)
    raise RuntimeError(f"{job.name} did not finish in store within 600 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--downloads", type=int, default=8, help="downloads at once")
    parser.add_argument("--lines", type=int, default=10_000, help="lines of the result file")
    parser.add_argument(
        "--pause-ms", type=float, default=1.0, help="a reader's pause every 50 lines (in process)"
    )
    parser.add_argument("--stack", action="store_true", help="through a whole local stack and Envoy")
    parser.add_argument(
        "--build",
        action="store_true",
        help="the memory of building a new file (in process), not reading it",
    )
    parser.add_argument(
        "--quiet-s", type=float, default=10.0, help="the probe's quiet phase (--build --stack)"
    )
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-results-") as folder:
        if args.build and args.stack:
            build_through_stack(args.lines, Path(folder), args.quiet_s)
        elif args.build:
            asyncio.run(build(args.lines, Path(folder)))
        elif args.stack:
            through_stack(args.downloads, args.lines, Path(folder))
        else:
            asyncio.run(in_process(args.downloads, args.lines, args.pause_ms, Path(folder)))
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
