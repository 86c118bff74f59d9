"""The manifest expander's index bound (``services.jobs.manifests.KeptIndexes``) as the jobs
process's RSS.

``python -m benchmarks.expander_memory`` starts a fresh local stack per variant, uploads
``--uploads`` (12) zips of ``--files`` (10,000) tiny PNGs each, and a JSONL manifest of 10,000
lines (a job's most) naming files of every upload in turn, a block of lines per upload (so each
index is read once per pass when all are kept, and the bound is what keeps them from adding up).
It then creates the job and samples the jobs process's RSS every 50 ms until the job leaves
EXPANDING (then cancels it: the items' inference is not the subject). Variants, alternated
``--rounds`` times: ``bound`` (the shipped ``KEPT_INDEX_ENTRIES``) and ``raised`` (the bound set
out of the way, 10**9, in the jobs process by ``benchmarks/patches/sitecustomize.py``: a
measurement only). Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from PIL import Image

from benchmarks.bulk import rss_bytes
from benchmarks.variants import variant_stack
from ferry.jobs.v1 import job_pb2
from ferry_client import FerryClient

MIB = 2**20


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def zips(count: int, files: int, folder: Path) -> list[Path]:
    png = tiny_png()
    made = []
    for z in range(count):
        path = folder / f"files-{z:02d}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for i in range(files):
                archive.writestr(f"f{z:02d}/{i:05d}.png", png)
        made.append(path)
    return made


def manifest(names: list[str], files: int, lines: int, folder: Path) -> Path:
    """``lines`` lines, a block per upload in turn (upload 0's first files, then upload 1's...)."""
    per = lines // len(names)
    path = folder / "manifest.jsonl"
    with path.open("w") as out:
        for z, name in enumerate(names):
            for i in range(min(per, files)):
                out.write(f'{{"image": "{name}/f{z:02d}/{i:05d}.png"}}\n')
    return path


def run(variant: str, zipped: list[Path], files: int, lines: int, root: Path) -> str:
    # One item at a time: the runner starts on the items as the expansion publishes them; its
    # work is not the subject, and a trickle of it keeps the two variants' processes alike.
    env: dict[str, str] = {"FERRY_JOBS_MAX_INFLIGHT": "1"}
    if variant == "raised":  # benchmarks/patches/sitecustomize.py sets it in the jobs process
        env["FERRY_BENCH_PATCH"] = "services.jobs services.jobs.manifests.KEPT_INDEX_ENTRIES=1000000000"
    with variant_stack(variant, env, root) as stack:
        endpoints = stack.start()
        jobs_pid = endpoints.pids["jobs"]
        with FerryClient(endpoints.grpc_target, "bench", timeout_s=600) as ferry:
            started = time.perf_counter()
            names = [ferry.upload(path).name for path in zipped]
            uploads_s = time.perf_counter() - started
            listed = manifest(names, files, lines, root)
            upload = ferry.upload(listed).name
            time.sleep(2.0)
            before = rss_bytes(jobs_pid)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.05):
                    peak[0] = max(peak[0], rss_bytes(jobs_pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.perf_counter()
            job = ferry.create_job([], "efficientnet-lite0", top_k=1, manifest=upload)
            while job_pb2.JobState.Name(job.state) == "JOB_STATE_EXPANDING":
                time.sleep(0.05)
                job = ferry.get_job(job.name)
            expanded_s = time.perf_counter() - started
            stop.set()
            sampler.join()
            state = job_pb2.JobState.Name(job.state)
            if job.state not in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED):
                ferry.cancel_job(job.name)
            after = rss_bytes(jobs_pid)
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        return (
            f"{variant}: {len(zipped)} uploads of {files} files in {uploads_s:.0f} s; job of "
            f"{job.items_total} items expanded in {expanded_s:.1f} s ({state}); jobs process RSS "
            f"{before / MIB:.0f} MB before, peak {peak[0] / MIB:.0f} MB (+{(peak[0] - before) / MIB:.0f}), "
            f"{after / MIB:.0f} MB after; load {load}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=12)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--variants", default="bound,raised")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-expander-") as state:
        root = Path(state)
        zipped = zips(args.uploads, args.files, root)
        for round_ in range(args.rounds):
            for variant in args.variants.split(","):
                said = run(variant, zipped, args.files, args.lines, root)
                print(f"[round {round_ + 1}] {said}", flush=True)
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
