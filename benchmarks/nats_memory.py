"""NATS's memory during a job of large images (issue #17): where nats-server's RSS goes, per phase.

``python -m benchmarks.nats_memory`` builds a zip of ``--images`` (25) noisy PNGs of about
9.7 MB each (``--side`` 1800 pixels: noise does not compress, so each PNG is its raw size), then,
for each variant in turn (``--variants``; alternated, ``--rounds`` times), starts a fresh local
stack on free ports with the variant's environment, uploads the zip, makes a job of it and waits
for its end, then watches ``--after-s`` seconds more. Meanwhile it samples nats-server's RSS (and
the jobs runner's and the upload lane's) every 50 ms from /proc, and every 250 ms NATS's
monitoring endpoint (the stack's nats.conf gets an ``http`` port for it): ``/varz``'s ``mem``,
``/connz``'s pending bytes per connection (what NATS holds in a client's outbound buffer), and
``/jsz``'s memory and store. With ``GODEBUG=gctrace=1`` in a variant (``--gctrace``: in all), the
Go runtime's GC lines in nats.log give the heap at each GC (before, after: live) and its goal;
Go's heap profile (``prof_port``, ``/debug/pprof/heap?debug=1``) taken when NATS's RSS was
highest says which allocations the live heap is (``--keep DIR`` keeps it).

A variant is ``name:VAR=value,VAR=value`` (``base:`` for none): its variables go into the
environment before its stack starts, so every process of it reads them
(``FERRY_NATS_MEMORY_LIMIT=off`` for nats-server's ``GOMEMLIMIT``, ``FERRY_JOBS_...`` for the
runner); ``FERRY_BENCH_PATCH`` sets a module's attribute in one service's processes
(``benchmarks/patches/sitecustomize.py``: the code as it was before a change, in the same run).
Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.bulk import rss_bytes
from benchmarks.variants import variant_stack
from devstack import stack as devstack_stack
from devstack.infra import free_port
from ferry.jobs.v1 import job_pb2
from ferry_client import FerryClient

MODEL = "efficientnet-lite0"
MIB = 2**20
_FINISHED = {
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
}
#: A Go GC trace line: "gc 12 @3.4s 1%: ... 40->45->20 MB, 48 MB goal, ..." (heap at the GC's
#: start, at its end, live after it; the next GC's goal).
_GCTRACE = re.compile(r"gc \d+ @[\d.]+s [\d.]+%: .*? (\d+)->(\d+)->(\d+) MB, (\d+) MB goal")


def noise_pngs(count: int, side: int, folder: Path) -> Path:
    """A zip (stored, not deflated: PNGs do not shrink) of ``count`` PNGs of ``side``² RGB noise:
    about 3 bytes a pixel, 9.7 MB at 1800."""
    random = np.random.default_rng(17)
    path = folder / f"noise-{count}x{side}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(count):
            pixels = random.integers(0, 256, (side, side, 3), dtype=np.uint8)
            buffer = _png(pixels)
            archive.writestr(f"noise/{i:03d}.png", buffer)
    return path


def _png(pixels: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@contextlib.contextmanager
def nats_monitoring(port: int, prof_port: int) -> Iterator[None]:
    """The stack's nats.conf with an ``http`` monitoring port and a ``prof_port`` (Go's pprof:
    ``/debug/pprof/heap``); devstack starts NATS with neither."""
    original = devstack_stack.nats_command

    def with_monitoring(*args: object, **kwargs: object) -> list[str]:
        argv = original(*args, **kwargs)  # type: ignore[arg-type]
        config = Path(argv[-1])
        extra = f'http: "127.0.0.1:{port}"\nprof_port: {prof_port}\n'
        config.write_text(config.read_text() + extra)
        return argv

    devstack_stack.nats_command = with_monitoring  # type: ignore[assignment]
    try:
        yield
    finally:
        devstack_stack.nats_command = original


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


@dataclass
class Phase:
    """Peaks seen during one phase."""

    name: str
    rss: dict[str, int] = field(default_factory=dict)
    varz_mem: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    js_store: int = 0
    js_memory: int = 0
    samples: int = 0


class Sampler:
    """Samples RSS (50 ms) and NATS's monitoring endpoint (250 ms) into the current phase."""

    def __init__(self, pids: dict[str, int], monitor: str, prof: str) -> None:
        self._pids = pids
        self._monitor = monitor
        self._prof = prof
        self.heap_profile = ""
        """Go's heap profile (text) taken when NATS's RSS was highest (checked every second)."""
        self._profiled_rss = 0
        self.phases: list[Phase] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, phase: str) -> None:
        self.phases.append(Phase(phase))
        self._thread.start()

    def mark(self, phase: str) -> None:
        self.phases.append(Phase(phase))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def profiled_mib(self) -> float:
        return self._profiled_rss / MIB

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            phase = self.phases[-1]
            phase.samples += 1
            for name, pid in self._pids.items():
                phase.rss[name] = max(phase.rss.get(name, 0), rss_bytes(pid))
            tick += 1
            if tick % 20 == 0 and "nats" in self._pids:
                rss = rss_bytes(self._pids["nats"])
                if rss > self._profiled_rss:
                    with contextlib.suppress(OSError, ValueError):
                        url = f"{self._prof}/debug/pprof/heap?debug=1"
                        with urllib.request.urlopen(url, timeout=5) as got:
                            self.heap_profile = got.read().decode(errors="replace")
                        self._profiled_rss = rss
            if tick % 5:
                continue
            with contextlib.suppress(OSError, ValueError):
                varz = _get(f"{self._monitor}/varz")
                phase.varz_mem = max(phase.varz_mem, int(varz.get("mem", 0)))  # type: ignore[call-overload]
                connz = _get(f"{self._monitor}/connz?limit=1024")
                for conn in connz.get("connections", []):  # type: ignore[union-attr]
                    who = f"{conn.get('name') or '?'}#{conn.get('cid')}"
                    phase.pending[who] = max(phase.pending.get(who, 0), int(conn.get("pending_bytes", 0)))
                jsz = _get(f"{self._monitor}/jsz")
                phase.js_store = max(phase.js_store, int(jsz.get("storage", 0)))  # type: ignore[call-overload]
                phase.js_memory = max(phase.js_memory, int(jsz.get("memory", 0)))  # type: ignore[call-overload]


def gc_summary(log: Path, offset: int) -> str:
    """The largest heap at a GC's start, live heap after one and goal in nats.log's GC trace."""
    text = log.read_bytes()[offset:].decode(errors="replace")
    found = [tuple(int(x) for x in m.groups()) for m in _GCTRACE.finditer(text)]
    if not found:
        return "no GC trace (GODEBUG=gctrace=1 not set)"
    return (
        f"{len(found)} GCs; heap at a GC's start max {max(f[0] for f in found)} MB, "
        f"live after max {max(f[2] for f in found)} MB, goal max {max(f[3] for f in found)} MB"
    )


def run_variant(name: str, env: dict[str, str], zipped: Path, after_s: float, root: Path) -> str:
    """One stack with ``env``: the upload, the job and ``after_s`` more; its report."""
    monitor_port, prof_port = free_port(), free_port()
    with variant_stack(name, env, root) as stack:
        with nats_monitoring(monitor_port, prof_port):
            endpoints = stack.start()
        watched = ("nats", "jobs", "gateway-uploads")
        pids = {key: endpoints.pids[key] for key in watched if key in endpoints.pids}
        log = Path(endpoints.logs_dir) / "nats.log"
        sampler = Sampler(pids, f"http://127.0.0.1:{monitor_port}", f"http://127.0.0.1:{prof_port}")
        with FerryClient(endpoints.grpc_target, "bench", timeout_s=600) as ferry:
            idle = {key: rss_bytes(pid) for key, pid in pids.items()}
            offset = log.stat().st_size
            sampler.start("upload")
            started = time.perf_counter()
            upload = ferry.upload(zipped)
            uploaded = time.perf_counter() - started
            sampler.mark("job")
            started = time.perf_counter()
            job = ferry.create_job([], MODEL, top_k=1, manifest=upload.name)
            for update in ferry.watch_job(job.name, timeout_s=1800):
                job = update.job
                if job.state in _FINISHED:
                    break
            job_s = time.perf_counter() - started
            sampler.mark(f"after ({after_s:g} s)")
            time.sleep(after_s)
            sampler.stop()
            end = {key: rss_bytes(pid) for key, pid in pids.items()}
        lines = [
            f"{name} ({' '.join(f'{k}={v}' for k, v in env.items()) or 'defaults'}): upload "
            f"{uploaded:.1f} s; job {job_pb2.JobState.Name(job.state)} {job.items_succeeded}/"
            f"{job.items_total} in {job_s:.1f} s; load {' / '.join(f'{x:.1f}' for x in os.getloadavg())}",
            "  idle RSS before: "
            + ", ".join(f"{k} {v / MIB:.0f} MB" for k, v in idle.items())
            + "; at the end: "
            + ", ".join(f"{k} {v / MIB:.0f} MB" for k, v in end.items()),
        ]
        for phase in sampler.phases:
            pending = sorted(phase.pending.items(), key=lambda kv: -kv[1])[:3]
            lines.append(
                f"  {phase.name}: peak RSS "
                + ", ".join(f"{k} {v / MIB:.0f} MB" for k, v in phase.rss.items())
                + f"; NATS varz mem {phase.varz_mem / MIB:.0f} MB, JetStream memory "
                f"{phase.js_memory / MIB:.0f} MB, store {phase.js_store / MIB:.0f} MB; most pending bytes: "
                + ", ".join(f"{k} {v / MIB:.1f} MB" for k, v in pending)
            )
        lines.append(f"  NATS GC: {gc_summary(log, offset)}")
        if sampler.heap_profile:
            saved_at = root / f"heap-{name}-{time.monotonic_ns()}.txt"
            saved_at.write_text(sampler.heap_profile)
            at = f"{sampler.profiled_mib:.0f} MB"
            lines.append(f"  NATS heap profile at its highest RSS ({at}): {saved_at}")
        return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(part.split("=", 1) for part in assignments.split(",") if part)
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=25, help="PNGs in the zip")
    parser.add_argument("--side", type=int, default=1800, help="each PNG's side in pixels (1800: 9.7 MB)")
    parser.add_argument(
        "--variants",
        default="base:",
        help="';'-separated name:VAR=value,... (each run on a fresh stack with that environment)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="times each variant runs, alternated")
    parser.add_argument("--after-s", type=float, default=20.0, help="seconds watched after the job")
    parser.add_argument("--gctrace", action="store_true", help="GODEBUG=gctrace=1 for every variant")
    parser.add_argument("--zip", type=Path, default=None, help="an existing zip to upload instead")
    parser.add_argument("--keep", type=Path, default=None, help="folder for heap profiles")
    args = parser.parse_args()
    variants = [parse_variant(text) for text in args.variants.split(";") if text]
    with tempfile.TemporaryDirectory(prefix="ferry-bench-nats-") as state:
        root = args.keep or Path(state)
        root.mkdir(parents=True, exist_ok=True)
        zipped = args.zip or noise_pngs(args.images, args.side, root)
        print(f"zip: {zipped.stat().st_size / 1e6:.0f} MB, {args.images} images", flush=True)
        for round_ in range(args.rounds):
            for name, env in variants:
                if args.gctrace:
                    env = {"GODEBUG": "gctrace=1", **env}
                said = run_variant(name, env, zipped, args.after_s, root)
                print(f"[round {round_ + 1}] {said}", flush=True)


if __name__ == "__main__":
    main()
