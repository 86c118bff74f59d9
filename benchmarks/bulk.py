"""Bulk jobs and hostile uploads against a whole local stack: memory of every process, and what
another tenant sees meanwhile.

``python -m benchmarks.bulk`` starts its own stack on free ports in a temporary folder, then runs
issue #17's cases one after another, each while a second tenant calls ``GetModel`` in a loop:

* **photos**: a zip of ``--photos`` (200) camera-sized JPEGs (``--megapixels`` 6; skimage's photos
  upscaled with sensor-like noise so they do not pack smaller than real ones) uploaded, a job
  created from it, and run to its end;
* **photos-upload**: the photos' zip uploaded, no job made from it;
* **bomb**: a zip of 60 files of 8 MiB of zeros (about 0.5 MB packed), uploaded;
* **jsonl-200mib**: a 200 MiB JSONL manifest of 16 million short lines, uploaded;
* **one-line-100mb**: a 100 MB manifest of one line, uploaded;
* **manifest-10k**: a job from a 10,000-line JSONL manifest whose lines name a zip upload's photo
  (uploaded before the case starts): CreateJob's answer time, and the other tenant's GetModel
  while the jobs service expands it (the case ends when the job leaves EXPANDING; the job is then
  cancelled: its items' inference is the photos case's subject);
* **manifest-100mb**: the same with 10,000 inline images of about 10 KB each (100 MB): every one
  is stored as an object by the expansion.

For each case it prints the answer (and how long it took), the peak RSS of gateway, the upload
lane (``gateway-uploads``, FERRY_UPLOAD_GATEWAYS), NATS, jobs runner and inference (sampled every
50 ms from /proc, children included), and the other tenant's GetModel p50/p99/max, against a
quiet baseline measured first; for the photos, also per phase (the upload; CreateJob and the
job's run) and the CPU per uploaded MB of Envoy, the gateways, NATS and the uploading client, and
while the job runs each process's cores used and its threads' run-queue wait per second (how long
they were runnable without a core: the other tenant's calls wait so in Envoy and the gateway),
inference's ``SCHED_IDLE`` share apart, the kernel's share of each process's CPU (``[n% kernel]``),
and what the machine's other processes (this benchmark's client and probe among them) used meanwhile.
``--sched-trace`` (root) also traces the kernel's scheduler during the job (and the manifest cases) and
says what the other tenant's calls waited for a core behind (``benchmarks.sched_waits``).
``--job-cpus last`` keeps the job's threads (inference's job threads, the jobs service) to the last
core (FERRY_INFERENCE_JOB_CPUS, FERRY_JOBS_CPUS); ``--job-cpus ''`` to none, for alternated runs.
The other tenant calls from a process of its own (in this one it would share the uploading
client's GIL). ``FERRY_UPLOAD_GATEWAYS=0`` runs the stack without the upload lane, for comparison;
``--job-lane 0`` (or ``FERRY_INFERENCE_JOB_LANE=0``) without the job lane (``inference-jobs``: the
inference process only the jobs runner calls, at autogroup nice 19), so alternated runs compare
the other tenant's p99 during the job with and without it. Every case also prints each process's
cores used and run-queue wait per second over its run. ``--uploads-cpu-idle auto|off`` and
``--runner-cpu-idle auto|off`` run the upload lane and the jobs runner in the ``cpu.idle`` cgroup or
not (FERRY_GATEWAY_UPLOADS_CPU_IDLE, FERRY_JOBS_RUNNER_CPU_IDLE); ``--spinners N`` keeps N busy
loops at normal priority running through each case (what an upload or expansion in that group
costs its own tenant while other work keeps the cores busy).
``--rounds N`` runs the photos job N times, each after a quiet baseline of its own, and prints the
other tenant's p99 per round and over all rounds' calls pooled: one run's p99 during the job is its
3rd slowest of about 300 calls.
Not a test: nothing here asserts; figures depend on the machine and its load (printed at the end).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data

from benchmarks.cpu import cpu_seconds
from benchmarks.sched_waits import SchedTrace, Trace, parse, slow_calls, thread_names
from benchmarks.sched_waits import report as sched_report
from devstack.infra import free_port, raise_priority
from devstack.settings import StackSettings
from devstack.stack import LocalStack
from ferry.jobs.v1 import job_pb2
from ferry.models.v1 import model_service_pb2
from ferry_client import FerryClient
from ferry_client.client import FerryError
from services.common import time_slice

MODEL = "efficientnet-lite0"
WATCHED = ("gateway", "gateway-uploads", "nats", "jobs", "inference", "inference-jobs")
_FINISHED = {
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
}


def spin() -> None:
    """A busy loop in a session (autogroup) of its own: a stand-in for other work (a flood of
    interactive calls) that keeps a core busy at normal priority."""
    os.setsid()
    while True:
        pass


@contextlib.contextmanager
def spinners(count: int) -> Iterator[None]:
    """``count`` busy loops while the block runs (``--spinners``)."""
    spawn = multiprocessing.get_context("spawn")
    started = [spawn.Process(target=spin, daemon=True) for _ in range(count)]
    for process in started:
        process.start()
    try:
        yield
    finally:
        for process in started:
            process.kill()
            process.join()


def rss_bytes(pid: int) -> int:
    """Resident bytes of ``pid`` and its children (the inference replicas, a notebook kernel)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(c) for c in children)
    return total


def probe(target: str, key: str, ready: EventType, stop: EventType, answers: Connection) -> None:
    """Another tenant's GetModel in a loop, 20 ms apart, from ``ready`` (set once its connection is
    warm: a few calls made and not counted) until ``stop``; sends back (ended at, latency ms) pairs.
    Runs in a process of its own: in the benchmark's process it would share the GIL with the
    uploading client, and its latency would be partly the client's."""
    times = []
    request = model_service_pb2.GetModelRequest(name=f"models/{MODEL}")
    with FerryClient(target, key, timeout_s=30) as prober:
        for _ in range(5):
            prober.models.GetModel(request, metadata=prober._metadata, timeout=30)
        ready.set()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                prober.models.GetModel(request, metadata=prober._metadata, timeout=30)
            except Exception:  # an error is a data point too: a refused call's time counts
                pass
            times.append((time.time(), (time.perf_counter() - started) * 1000))
            time.sleep(0.02)
    answers.send(times)


class Watch:
    """Samples the processes' RSS and times another tenant's GetModel while a case runs."""

    def __init__(
        self, pids: dict[str, int], target: str, key: str, probe_niceness: int = 0, probe_slice_us: int = 0
    ) -> None:
        self._pids = {name: pids[name] for name in WATCHED if name in pids}
        self._target, self._key = target, key
        self._probe_niceness, self._probe_slice_us = probe_niceness, probe_slice_us
        self.peaks: dict[str, int] = {}
        self.before: dict[str, int] = {}
        self.latencies_ms: list[float] = []
        self.ended_at: list[float] = []
        """When each of ``latencies_ms`` ended (time.time()): a case's phases are told apart by it."""
        self.marks: list[tuple[str, float]] = []
        self.sched: tuple[Trace, dict[int, str], set[int]] | None = None
        """The photos job's sched trace, its threads' names and the other tenant's path."""
        self._stop = threading.Event()

    def __enter__(self) -> Watch:
        self.before = {name: rss_bytes(pid) for name, pid in self._pids.items()}
        self.peaks = dict(self.before)
        spawn = multiprocessing.get_context("spawn")
        self._probe_stop, ready = spawn.Event(), spawn.Event()
        self._answers, sending = spawn.Pipe(duplex=False)
        args = (self._target, self._key, ready, self._probe_stop, sending)
        self._prober = spawn.Process(target=probe, args=args)
        self._prober.start()
        self.prober_pid = self._prober.pid
        if self._probe_slice_us:
            time_slice.shorten_process(self.prober_pid, self._probe_slice_us)
        if self._probe_niceness < 0 and not raise_priority(self.prober_pid, -self._probe_niceness):
            print(f"the other tenant's client at nice 0, not {self._probe_niceness}: needs CAP_SYS_NICE")
        if not ready.wait(120):  # its imports and first calls, before the case starts
            raise RuntimeError("the other tenant's probe did not start within 120 s")
        self._sampler = threading.Thread(target=self._sample)
        self._sampler.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._probe_stop.set()
        times = self._answers.recv()
        self._prober.join()
        self._sampler.join()
        self.ended_at = [at for at, _ in times]
        self.latencies_ms = [ms for _, ms in times]

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for name, pid in self._pids.items():
                self.peaks[name] = max(self.peaks[name], rss_bytes(pid))

    def slowest_calls(self) -> str:
        """What the slowest calls during the sched trace were made of (``sched_waits.slow_calls``),
        once the watch ended; "" without a trace."""
        if self.sched is None:
            return ""
        offset = time.time() - time.monotonic()  # one system-wide offset, whatever the process
        calls = [
            (at - offset - ms / 1000, at - offset)
            for at, ms in zip(self.ended_at, self.latencies_ms, strict=True)
        ]
        return slow_calls(*self.sched, calls)

    def mark(self, phase: str) -> None:
        """Ends the phase named ``phase`` now (the report gives each phase's p50/p99 too)."""
        self.marks.append((phase, time.time()))

    def report(self, name: str, outcome: str) -> str:
        mib = 2**20
        memory = ", ".join(
            f"{proc} {self.before[proc] / mib:.0f}->{self.peaks[proc] / mib:.0f} MB" for proc in self._pids
        )
        lines = [
            f"{name}: {outcome}",
            f"  peak RSS: {memory}",
            f"  other tenant's GetModel {_spread(self.latencies_ms)}",
        ]
        for phase, _ in self.marks:
            lines.append(f"    during {phase}: {_spread(self.during(phase))}")
        return "\n".join(lines)

    def during(self, phase: str) -> list[float]:
        """The latencies of the calls that ended in ``phase`` (after the mark before it)."""
        start = -1e18
        for name, end in self.marks:
            if name == phase:
                return [
                    ms for ms, at in zip(self.latencies_ms, self.ended_at, strict=True) if start < at <= end
                ]
            start = end
        raise KeyError(phase)


Usage = tuple[float, float, float, float]
"""CPU seconds, of which at ``SCHED_IDLE``, seconds waited runnable for a core, of the CPU seconds
those in the kernel (``scheduled``)."""


def scheduled(pids: dict[str, int]) -> dict[str, Usage]:
    """(CPU seconds, of which at ``SCHED_IDLE``, seconds its threads waited runnable for a core,
    CPU seconds in the kernel) so far of each named process, summed over its threads
    (``/proc/<pid>/task/*/schedstat``; the kernel's share from ``/proc/<pid>/stat``'s stime, in
    clock ticks; Postgres is its backends' parent: only its own threads count); ``machine``: all
    cores' busy seconds (``/proc/stat``). Linux; elsewhere every figure is 0."""
    found: dict[str, Usage] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in pids.items():
        ran = idle = waited = kernel = 0.0
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                policy, system_ticks = stat[38], int(stat[12])
            except (OSError, ValueError, IndexError):  # the thread ended meanwhile
                continue
            ran += int(run_ns) / 1e9
            waited += int(wait_ns) / 1e9
            idle += int(run_ns) / 1e9 if policy == str(os.SCHED_IDLE) else 0.0
            kernel += system_ticks / tick
        found[name] = (ran, idle, waited, kernel)
    with contextlib.suppress(OSError):
        busy = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
        ticks = sum(int(x) for x in busy[:8]) - int(busy[3]) - int(busy[4])
        found["machine"] = (ticks / tick, 0.0, 0.0, 0.0)
    return found


def cores_used(before: dict[str, Usage], after: dict[str, Usage], wall_s: float) -> str:
    """Each process's cores used (the kernel's share of them in brackets) and run-queue wait per
    second between two ``scheduled`` samples, most CPU first, and what the rest of the machine
    (other processes) used meanwhile (this benchmark and its probe among them)."""
    spent = {
        name: tuple((a - b) / wall_s for a, b in zip(after[name], before[name], strict=True))
        for name in after
        if name in before
    }
    machine = spent.pop("machine", (0.0, 0.0, 0.0, 0.0))[0]
    parts = [
        f"{name} {ran:.2f}"
        + (f" ({idle:.2f} SCHED_IDLE)" if idle else "")
        + (f" [{min(1.0, kernel / ran):.0%} kernel]" if ran >= 0.01 else "")
        + f"/{waited:.2f}"
        for name, (ran, idle, waited, kernel) in sorted(spent.items(), key=lambda kv: -kv[1][0])
    ]
    others = machine - sum(used[0] for used in spent.values())
    return ", ".join(parts) + f"; the machine {machine:.2f} of {os.cpu_count()}, other processes {others:.2f}"


def _spread(latencies_ms: list[float]) -> str:
    """Count, p50, p99 and max of some calls' latencies."""
    lat = sorted(latencies_ms) or [0.0]
    median = statistics.median(lat)
    return f"({len(latencies_ms)} calls): p50 {median:.1f} ms, p99 {_p99(lat):.1f} ms, max {lat[-1]:.1f} ms"


def _p99(latencies_ms: list[float]) -> float:
    lat = sorted(latencies_ms) or [0.0]
    return lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def over_quiet(latencies_ms: list[float], quiet_ms: list[float]) -> str:
    """The calls slower than 1.2x the quiet p99 (#17's bound), and their time past it summed: what
    a case cost the other tenant whatever its length (a p99 over 60 calls is their slowest; over
    600, their 6th slowest, so a case made longer, as a paced upload is, looks better by p99 alone)."""
    bound = 1.2 * _p99(quiet_ms)
    over = [ms - bound for ms in latencies_ms if ms > bound]
    return (
        f"{len(over)} of {len(latencies_ms)} calls over 1.2x the quiet p99 ({bound:.1f} ms), "
        f"{sum(over):.0f} ms past it"
    )


def rounds_report(rounds: list[tuple[list[float], list[float]]]) -> str:
    """The photos job's rounds, each (its quiet baseline's latencies, those during its job): the
    p99 of each round's and of all rounds' calls pooled, and the ratio (issue #17: at most 1.2)."""
    per_round = ", ".join(f"{_p99(q):.1f} -> {_p99(d):.1f} ({_p99(d) / _p99(q):.2f}x)" for q, d in rounds)
    quiet = [ms for q, _ in rounds for ms in q]
    during = [ms for _, d in rounds for ms in d]
    return (
        f"photos over {len(rounds)} rounds, each after a quiet baseline of its own: the other tenant's "
        f"GetModel p99 quiet -> during CreateJob and the job's run, per round: {per_round}; pooled: "
        f"quiet {_spread(quiet)}; during {_spread(during)}: {_p99(during) / _p99(quiet):.2f}x"
    )


def camera_jpeg(source: np.ndarray, megapixels: float, random: np.random.Generator) -> bytes:
    """``source`` upscaled to a 3:2 photo of ``megapixels`` with sensor-like noise, as a phone's
    JPEG (quality 85, about 1 MB per 6 MP: the noise is what makes its entropy decoding cost)."""
    width = int((megapixels * 1e6 * 3 / 2) ** 0.5)
    size = (width, width * 2 // 3)
    base = np.asarray(Image.fromarray(source).convert("RGB").resize(size, Image.BICUBIC), dtype=np.int16)
    noisy = (base + random.integers(-10, 11, base.shape, dtype=np.int16)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def phone_photo(megapixels: float) -> bytes:
    """One camera-sized JPEG of the cat (``camera_jpeg``), the same bytes on every call."""
    return camera_jpeg(skimage_data.chelsea(), megapixels, np.random.default_rng(17))


def camera_photos(count: int, megapixels: float, folder: Path) -> Path:
    """A zip of ``count`` camera-sized JPEGs (about 1 MB per 6 MP, like a phone's): skimage's
    four photos upscaled with sensor-like noise, each encoded once and stored ``count / 4``
    times under different names (a zip packs each file on its own, so repeats save nothing)."""
    sources = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut(), skimage_data.rocket()]
    random = np.random.default_rng(17)
    encoded = [camera_jpeg(source, megapixels, random) for source in sources]
    path = folder / "photos.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for i in range(count):
            archive.writestr(f"photos/{i:04d}.jpg", encoded[i % len(encoded)])
    return path


def bomb(folder: Path) -> Path:
    path = folder / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for i in range(60):
            archive.writestr(f"zeros-{i:02d}.jpg", bytes(8 * 1024 * 1024))
    return path


def big_jsonl(folder: Path) -> Path:
    path = folder / "big.jsonl"
    line = b'{"text":"x"}\n'
    with path.open("wb") as out:
        block = line * (1024 * 1024 // len(line))
        for _ in range(200):
            out.write(block)
    return path


def one_line(folder: Path) -> Path:
    path = folder / "one-line.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * (100 * 1000 * 1000) + b'"}\n')
    return path


def image_manifest(folder: Path, name: str, zip_name: str, lines: int) -> Path:
    """A JSONL manifest of ``lines`` lines naming the one photo of the upload ``zip_name``."""
    path = folder / name
    path.write_text(f'{{"image": "{zip_name}/photo.jpg"}}\n' * lines)
    return path


def content_manifest(folder: Path, name: str, lines: int, line_bytes: int) -> Path:
    """A JSONL manifest of ``lines`` inline images (``{"content": <base64>}``) of about
    ``line_bytes`` each: a small noisy JPEG grown until its base64 fills the line."""
    random = np.random.default_rng(17)
    for side in range(64, 1024, 8):
        pixels = random.integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=60)
        if len(buffer.getvalue()) * 4 // 3 >= line_bytes - 20:
            break
    line = '{"content": "' + base64.b64encode(buffer.getvalue()).decode() + '"}\n'
    path = folder / name
    path.write_text(line * lines)
    return path


def until_expanded(ferry: FerryClient, job: job_pb2.Job) -> job_pb2.Job:
    """The job once it is no longer EXPANDING (by name: the benchmark also runs against a
    checkout from before jobs expanded, which has no such state)."""
    while job_pb2.JobState.Name(job.state) == "JOB_STATE_EXPANDING":
        time.sleep(0.05)
        job = ferry.get_job(job.name)
    return job


def small_job(ferry: FerryClient, upload: str, delay_s: float, said: list[str]) -> None:
    """Another tenant's small manifest job, ``delay_s`` after the big one was sent: how long its
    CreateJob took and how long until it left EXPANDING (fairness between tenants)."""
    time.sleep(delay_s)
    started = time.perf_counter()
    job = ferry.create_job([], MODEL, top_k=1, manifest=upload)
    answered = time.perf_counter() - started
    job = until_expanded(ferry, job)
    said.append(
        f"another tenant's {job.items_total}-line manifest: CreateJob {answered * 1000:.0f} ms, "
        f"expanded {time.perf_counter() - started:.1f} s after it was sent"
    )
    if job.state not in _FINISHED:
        ferry.cancel_job(job.name)


def manifest_job(ferry: FerryClient, upload: str, small: tuple[FerryClient, str] | None = None) -> str:
    """Creates a job from ``upload``, waits until it is no longer EXPANDING, then cancels it;
    ``small`` (a client of another tenant, its upload) sends a small manifest job a second later."""
    said: list[str] = []
    other = None
    if small is not None:
        other = threading.Thread(target=small_job, args=(*small, 1.0, said))
        other.start()
    started = time.perf_counter()
    job = ferry.create_job([], MODEL, top_k=1, manifest=upload)
    answered = time.perf_counter() - started
    first_state = job_pb2.JobState.Name(job.state)
    job = until_expanded(ferry, job)
    expanded = time.perf_counter() - started
    state = job_pb2.JobState.Name(job.state)
    if job.state not in _FINISHED:
        ferry.cancel_job(job.name)  # the items' inference is the photos case's subject, not this one's
        state += ", then cancelled"
    if other is not None:
        other.join()
    return (
        f"CreateJob answered {first_state} in {answered * 1000:.0f} ms; "
        f"expanded in {expanded:.1f} s into {job.items_total} items ({state})"
        + "".join(f"; {line}" for line in said)
    )


def timed(action: Callable[[], str]) -> str:
    started = time.perf_counter()
    try:
        outcome = action()
    except FerryError as err:
        outcome = f"refused {err.code.name} {getattr(err, 'reason', '')}: {str(err)[:160]}"
    return f"{outcome} ({time.perf_counter() - started:.1f} s)"


JOB_PHASE = "CreateJob and the job's run"
"""The photos case's phase that #17's p99 is judged on."""


@contextlib.contextmanager
def sched_traced(watch: Watch, pids: dict[str, int], on: bool) -> Iterator[list[str]]:
    """Traces the scheduler while the block runs (when ``on``); the list it gives ends up holding
    what the other tenant's threads waited behind (``sched_waits.report``), and ``watch`` the trace
    (``Watch.slowest_calls``)."""
    waited: list[str] = []
    tracer = SchedTrace()
    if on:
        tracer.start()
    yield waited
    if on:
        # The other tenant's path: its client, Envoy and the gateways (not the upload lane).
        front = {pid for name, pid in pids.items() if name == "envoy" or name.startswith("gateway")}
        front = (front - {pids.get("gateway-uploads")}) | {watch.prober_pid}
        # This benchmark's own process (its uploading client, the sampler) apart from the rest.
        names = thread_names(pids | {"client": watch.prober_pid, "benchmark": os.getpid()})
        tracer.stop()
        trace = parse(tracer.lines)
        watch.sched = (trace, names, front)
        waited.append("\n" + (tracer.why_not or sched_report(trace, names, front)))


def photo_job(
    ferry: FerryClient,
    path: Path,
    watch: Watch,
    cpu: Callable[[], dict[str, float]],
    pids: dict[str, int],
    sched_trace: bool = False,
) -> str:
    before, own = cpu(), time.process_time()
    started = time.perf_counter()
    upload = ferry.upload(path)
    uploaded = time.perf_counter() - started
    watch.mark("the upload")
    spent = {name: used - before[name] for name, used in cpu().items()}
    spent["client (this benchmark)"] = time.process_time() - own
    with sched_traced(watch, pids, sched_trace) as waited:
        sched_before, job_started = scheduled(pids), time.perf_counter()
        job = ferry.create_job([], MODEL, top_k=1, manifest=upload.name)
        created = time.perf_counter() - started - uploaded
        for update in ferry.watch_job(job.name, timeout_s=3600):
            job = update.job
            if job.state in _FINISHED:
                break
        watch.mark(JOB_PHASE)
        job_s = time.perf_counter() - job_started
        usage = cores_used(sched_before, scheduled(pids), job_s)
    megabytes = path.stat().st_size / 1e6
    return (
        f"{megabytes:.0f} MB zip uploaded in {uploaded:.1f} s (CPU per MB uploaded: "
        + ", ".join(f"{name} {1000 * used / megabytes:.1f} ms" for name, used in spent.items())
        + f"), CreateJob answered in {created * 1000:.0f} ms, job {job_pb2.JobState.Name(job.state)} "
        f"({job.items_succeeded}/{job.items_total} succeeded) in {job_s:.1f} s; meanwhile cores used / "
        f"threads' run-queue wait per second: {usage}{''.join(waited)}"
    )


def unmeasured_job(ferry: FerryClient, path: Path) -> str:
    """Uploads ``path`` and runs a job of it to its end: how it ended."""
    job = ferry.create_job([], MODEL, top_k=1, manifest=ferry.upload(path).name)
    for update in ferry.watch_job(job.name, timeout_s=3600):
        if update.job.state in _FINISHED:
            job = update.job
            break
    return f"{job_pb2.JobState.Name(job.state)} ({job.items_succeeded}/{job.items_total} succeeded)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=int, default=200, help="photos in the bulk zip")
    parser.add_argument("--megapixels", type=float, default=6.0, help="size of each photo")
    parser.add_argument(
        "--cases", default="photos,bomb,jsonl-200mib,one-line-100mb,manifest-10k,manifest-100mb"
    )
    parser.add_argument(
        "--job-lane",
        type=int,
        default=None,
        help="job-lane inference processes (FERRY_INFERENCE_JOB_LANE; default: the stack's setting)",
    )
    parser.add_argument(
        "--uploads-cpu-idle",
        choices=("auto", "off"),
        default=None,
        help="the upload lane in the cpu.idle cgroup (FERRY_GATEWAY_UPLOADS_CPU_IDLE; default: the stack's)",
    )
    parser.add_argument(
        "--runner-cpu-idle",
        choices=("auto", "off"),
        default=None,
        help="the jobs runner in the cpu.idle cgroup (FERRY_JOBS_RUNNER_CPU_IDLE; default: the stack's)",
    )
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=15.0,
        help="how long the other tenant's quiet baseline runs (its p99 is the yardstick of every "
        "case: at 5 s, 200 calls, it was their 2nd slowest and moved 4-60 ms between runs)",
    )
    parser.add_argument(
        "--job-cpus",
        default=None,
        help="cores the job's work keeps to: inference's job threads and the jobs service "
        "(FERRY_INFERENCE_JOB_CPUS and FERRY_JOBS_CPUS, e.g. 'last'; default: the stack's)",
    )
    parser.add_argument(
        "--gateway-niceness",
        type=int,
        default=None,
        help="the callers' gateways' CPU priority (FERRY_GATEWAY_NICENESS, e.g. -10; default: the stack's)",
    )
    parser.add_argument(
        "--probe-niceness",
        type=int,
        default=0,
        help="the other tenant's client at this autogroup nice (e.g. -10, root): a client on another "
        "machine does not wait for these cores; 0 (default): it competes for them like any process",
    )
    parser.add_argument(
        "--front-door-slice-us",
        type=int,
        default=None,
        help="Envoy's and the gateways' scheduler time slice (FERRY_ENVOY_TIME_SLICE_US and "
        "FERRY_GATEWAY_TIME_SLICE_US; 0: the kernel's; default: the stack's)",
    )
    parser.add_argument(
        "--probe-slice-us",
        type=int,
        default=time_slice.FRONT_DOOR_SLICE_US,
        help="the other tenant's client's scheduler time slice: in life it runs on a machine of its "
        "own; here it shares these cores, and the shortest slice (the default, 100) keeps its own "
        "waits for a core out of its figures as far as the kernel allows; 0: it competes as any process",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the photos job this many times, each after a quiet baseline of its own, and pool "
        "the other tenant's calls: one run's p99 is its 3rd slowest of about 300, and a quiet p99 "
        "moved 3.8-9.9 ms between runs alike (docs/benchmarks.md, session 11)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="photos jobs run before the first quiet baseline and not measured: twice the first round "
        "after the stack started found a quiet p99 of 12.7 and 27.2 ms where most rounds found 4.5-6.9 "
        "(docs/benchmarks.md, sessions 14-15), which made that round's ratio look better than it was",
    )
    parser.add_argument(
        "--sched-trace",
        action="store_true",
        help="trace the kernel's scheduler during the photos job and the manifest cases and say what "
        "the other tenant's calls waited for a core behind (benchmarks.sched_waits; root)",
    )
    parser.add_argument(
        "--spinners",
        type=int,
        default=0,
        help="busy loops at normal priority during each case (how a job or upload in the cpu.idle "
        "group crawls while other work keeps the cores busy)",
    )
    args = parser.parse_args()
    cases = args.cases.split(",")
    # The stack reads its settings from the environment.
    for variable, value in (
        ("FERRY_INFERENCE_JOB_LANE", args.job_lane),
        ("FERRY_GATEWAY_UPLOADS_CPU_IDLE", args.uploads_cpu_idle),
        ("FERRY_JOBS_RUNNER_CPU_IDLE", args.runner_cpu_idle),
        ("FERRY_INFERENCE_JOB_CPUS", args.job_cpus),
        ("FERRY_JOBS_CPUS", args.job_cpus),
        ("FERRY_GATEWAY_NICENESS", args.gateway_niceness),
        ("FERRY_ENVOY_TIME_SLICE_US", args.front_door_slice_us),
        ("FERRY_GATEWAY_TIME_SLICE_US", args.front_door_slice_us),
    ):
        if value is not None:
            os.environ[variable] = str(value)

    with tempfile.TemporaryDirectory(prefix="ferry-bench-bulk-") as state:
        folder = Path(state)
        files = {
            "photos": lambda: camera_photos(args.photos, args.megapixels, folder),
            # The same zip, uploaded only (no job): what the upload lane's priority costs its tenant.
            "photos-upload": lambda: (
                made.get("photos") or camera_photos(args.photos, args.megapixels, folder)
            ),
            "bomb": lambda: bomb(folder),
            "jsonl-200mib": lambda: big_jsonl(folder),
            "one-line-100mb": lambda: one_line(folder),
            "manifest-100mb": lambda: content_manifest(folder, "100mb.jsonl", 10_000, 10_000),
        }
        made: dict[str, Path] = {}
        for name in cases:
            if name in files:
                made[name] = files[name]()
        settings = StackSettings(
            state_dir=folder / "stack", http_port=free_port(), free_ports=True, dev_api_key="bench"
        )
        stack = LocalStack(settings)
        try:
            endpoints = stack.start()
            lane = ", ".join(name for name in endpoints.pids if name.startswith("inference-jobs"))
            print(f"job lane: {lane or 'off'} (FERRY_INFERENCE_JOB_LANE={settings.inference_job_lane})")
            print(
                f"cpu.idle: upload lane {settings.gateway_uploads_cpu_idle}, "
                f"jobs runner {settings.jobs_runner_cpu_idle}; the job's cores: "
                f"{os.environ.get('FERRY_INFERENCE_JOB_CPUS') or 'any'}; nice: envoy "
                f"{settings.envoy_niceness}, gateways {settings.gateway_niceness}, the other "
                f"tenant's client {args.probe_niceness}; time slices (us; 0: the kernel's): Envoy "
                f"{settings.envoy_time_slice_us}, the gateways "
                f"{os.environ.get('FERRY_GATEWAY_TIME_SLICE_US', 'theirs')}, "
                f"the other tenant's client {args.probe_slice_us}"
            )
            edge: dict[str, int] = {
                name: endpoints.pids[name]
                for name in ("envoy", "gateway", "gateway-uploads", "nats")
                if name in endpoints.pids
            }
            cpu = partial(cpu_seconds, edge)
            with FerryClient(endpoints.grpc_target, "bench", timeout_s=600) as ferry:
                other = ferry.create_key("other-tenant", scopes=("read",)).api_key
                small_key = ferry.create_key("small-tenant", scopes=("jobs", "read")).api_key
                ferry.predict(skimage_photo())  # warm: connections, the model's first batch
                other_tenant = partial(
                    Watch,
                    endpoints.pids,
                    endpoints.grpc_target,
                    other,
                    args.probe_niceness,
                    args.probe_slice_us,
                )

                def baseline() -> list[float]:
                    with other_tenant() as quiet:
                        time.sleep(args.quiet_seconds)
                    print(
                        quiet.report(f"quiet baseline ({args.quiet_seconds:g} s)", "nothing else running"),
                        flush=True,
                    )
                    return quiet.latencies_ms

                for _ in range(args.warmup if "photos" in cases else 0):
                    print(f"warm-up (not measured): {timed(lambda: unmeasured_job(ferry, made['photos']))}")
                quiet_ms = baseline()
                rounds: list[tuple[list[float], list[float]]] = []
                small_client = FerryClient(endpoints.grpc_target, small_key, timeout_s=600)
                small_manifest = folder / "small.jsonl"
                small_line = '{"content": "' + base64.b64encode(skimage_photo()).decode() + '"}\n'
                small_manifest.write_text(small_line * 10)
                small_upload = small_client.upload(small_manifest).name
                for name in [case for case in cases for _ in range(args.rounds if case == "photos" else 1)]:
                    if name == "photos" and rounds:  # the next round: a quiet baseline of its own
                        quiet_ms = baseline()
                    if name == "manifest-10k":  # its lines name a zip upload's photo
                        zipped = folder / "one-photo.zip"
                        with zipfile.ZipFile(zipped, "w") as archive:
                            archive.writestr("photo.jpg", skimage_photo())
                        made[name] = image_manifest(folder, "10k.jsonl", ferry.upload(zipped).name, 10_000)
                    path = made[name]
                    if name.startswith("manifest-"):
                        upload = ferry.upload(path).name  # before the watch: the expansion is measured
                    with spinners(args.spinners), other_tenant() as watch:
                        sched_before, case_started = scheduled(endpoints.pids), time.perf_counter()
                        if name == "photos":
                            outcome = timed(
                                lambda p=path, w=watch: photo_job(
                                    ferry, p, w, cpu, endpoints.pids, args.sched_trace
                                )
                            )
                        elif name.startswith("manifest-"):
                            with sched_traced(watch, endpoints.pids, args.sched_trace) as waited:
                                outcome = timed(
                                    lambda u=upload: manifest_job(ferry, u, (small_client, small_upload))
                                )
                            outcome += "".join(waited)
                        else:
                            # One line: the Upload message's text form has one per field.
                            outcome = timed(
                                lambda p=path: f"accepted {' '.join(str(ferry.upload(p)).split())}"
                            )
                        case_s = time.perf_counter() - case_started
                        usage = cores_used(sched_before, scheduled(endpoints.pids), case_s)
                    size_mb = path.stat().st_size / 1e6
                    print(watch.report(f"{name} ({size_mb:.1f} MB)", outcome), flush=True)
                    print(f"  {over_quiet(watch.latencies_ms, quiet_ms)}", flush=True)
                    if slowest := watch.slowest_calls():
                        print(slowest, flush=True)
                    # Which processes the case kept busy (the other tenant's probe is an "other process").
                    print(f"  over the case's {case_s:.1f} s, cores used / run-queue wait per s: {usage}")
                    print(f"  load average: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
                    if name == "photos":
                        rounds.append((quiet_ms, watch.during(JOB_PHASE)))
                if len(rounds) > 1:
                    print(rounds_report(rounds), flush=True)
        finally:
            stack.stop()
    print(f"\nload average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine)")


def skimage_photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
