"""Batch jobs benchmark: submission rate, a 2,000-image job against the sync path, job finalization.

``python -m benchmarks.jobs`` (or ``make bench-jobs``) starts its own local stack on free ports in
a temporary folder, like ``benchmarks.e2e``, and prints, all measured in this one run:

* **submission**: items/s accepted by ``CreateJob`` (gRPC through Envoy) for jobs of small inputs
  (a 1 KiB JPEG), from the call to its answer; every item is on JetStream by then. The jobs are
  low priority and cancelled at once, so the runners skip their items instead of classifying
  them, and the end-to-end job (normal priority) is not queued behind them.
* **end to end**: items/s of one 2,000-image job, from ``CreateJob`` to the job's final state (read
  from WatchJob), against the same 2,000 images through the synchronous ``Predict`` path with
  ``--clients`` concurrent clients;
* **finalization**: time from the last item's record (its ``create_time``) to the job's final
  state (the job's ``update_time`` when store counted that item), both stamped on this machine.

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from PIL import Image
from skimage import data as skimage_data

from benchmarks.e2e import MODEL
from devstack.infra import free_port
from devstack.settings import StackSettings
from devstack.stack import LocalStack
from ferry.jobs.v1 import job_pb2
from ferry_client import FerryClient
from ferry_client.client import FerryError

_FINISHED = {
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
}


def small_jpeg() -> bytes:
    """A 32x32 JPEG of about 1 KiB: a "small input" whose cost is the job path, not the bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def job_jpeg() -> bytes:
    """The cat photo at 224x149 (about 10 KiB): 2,000 of them fit one CreateJob's 32 MiB body
    (the 451x300 photo of benchmarks.e2e would make 77 MB, over the limit: bigger jobs wait for
    inputs by reference)."""
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).resize((224, 149)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def submission(ferry: FerryClient, jobs: int, items: int) -> list[float]:
    """items/s of ``jobs`` CreateJob calls of ``items`` small inputs each (then cancelled)."""
    image = small_jpeg()
    rates = []
    for _ in range(jobs):
        started = time.perf_counter()
        job = ferry.create_job([image] * items, MODEL, top_k=1, priority="low")
        rates.append(items / (time.perf_counter() - started))
        ferry.cancel_job(job.name)
    return rates


def job_end_to_end(ferry: FerryClient, image: bytes, items: int) -> tuple[float, float, job_pb2.Job]:
    """(items/s from CreateJob to the final state, seconds from the last record to it, the job)."""
    started = time.perf_counter()
    job = ferry.create_job([image] * items, MODEL, top_k=5)
    for update in ferry.watch_job(job.name, timeout_s=3600):
        job = update.job
        if job.state in _FINISHED:
            break
    elapsed = time.perf_counter() - started
    last_record = max(
        p.create_time.ToDatetime() for p in ferry.iter_predictions(job=job.name, page_size=1000)
    )
    finalization = (job.update_time.ToDatetime() - last_record).total_seconds()
    return items / elapsed, finalization, job


def sync_path(ferry: FerryClient, image: bytes, items: int, clients: int) -> tuple[float, int]:
    """(items/s of the same images through synchronous Predict calls from ``clients`` threads,
    how many calls the gateway shed with RESOURCE_EXHAUSTED and were sent again, as its message
    asks: a sync client has to, where a job's items simply wait in the queue)."""
    shed = 0

    def predict() -> None:
        nonlocal shed
        while True:
            try:
                ferry.predict(image, MODEL, 5)
                return
            except FerryError as err:
                if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                shed += 1
                time.sleep(0.05)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(predict) for _ in range(items)]:
            future.result()
    return items / (time.perf_counter() - started), shed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--submit-jobs", type=int, default=3, help="CreateJob calls measured for submission")
    parser.add_argument("--submit-items", type=int, default=10_000, help="small inputs per submitted job")
    parser.add_argument("--items", type=int, default=2_000, help="images in the end-to-end job")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients on the sync path")
    args = parser.parse_args()
    image = job_jpeg()

    with tempfile.TemporaryDirectory(prefix="ferry-bench-jobs-") as state:
        stack = LocalStack(
            StackSettings(state_dir=Path(state), http_port=free_port(), free_ports=True, dev_api_key="bench")
        )
        try:
            endpoints = stack.start()
            with FerryClient(endpoints.grpc_target, "bench", timeout_s=600) as ferry:
                ferry.predict(image)  # warm: connections, the model's first batch
                rates = submission(ferry, args.submit_jobs, args.submit_items)
                print("submission items/s: " + ", ".join(f"{r:,.0f}" for r in rates), flush=True)
                sync, shed = sync_path(ferry, image, args.items, args.clients)
                print(f"sync items/s: {sync:.1f} ({shed} calls shed and sent again)", flush=True)
                job_rate, finalization, job = job_end_to_end(ferry, image, args.items)
        finally:
            stack.stop()

    load = os.getloadavg()
    print(
        f"\n{MODEL}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end (shared machine)"
    )
    print(
        f"submission, {args.submit_items:,} inputs of {len(small_jpeg())} B per CreateJob (gRPC via Envoy):"
    )
    print("  items/s accepted: " + ", ".join(f"{r:,.0f}" for r in rates) + f"  (best {max(rates):,.0f})")
    print(f"end to end, {args.items:,} images of {len(image):,} B:")
    print(f"  sync Predict, {args.clients} clients:   {sync:8.1f} items/s  ({shed} calls shed, sent again)")
    print(
        f"  one job, CreateJob to final: {job_rate:8.1f} items/s  ({job_rate / sync:.2f}x the sync path;"
        f" {job_pb2.JobState.Name(job.state)}, {job.items_succeeded} succeeded, {job.items_failed} failed)"
    )
    print(f"  last item's record to the job's final state: {finalization * 1000:.0f} ms")


if __name__ == "__main__":
    main()
