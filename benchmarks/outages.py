"""The resilience issue's measurements, re-run: ``python -m benchmarks.outages``.

The same faults the issue measured on landed main, on a fresh supervised stack (``ferry up`` on free
ports in a temporary folder), with its sizes: a 200-image job, NATS down 12 s, Postgres down 20 s.
Prints one table of what a client saw and what Postgres holds. Not a test: nothing is asserted
(the fault matrix in tests/faults asserts the invariants on every ``make test``).
"""

from __future__ import annotations

import io
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from skimage import data as skimage_data

from services.common.ids import prediction_id_for_request
from tests.e2e.stack import RunningStack
from tests.faults.harness import FaultStack, SteadyLoad

API_KEY = "ferry-outages-key-0123456789"
JOB_ITEMS = 200


def _jpeg(pixels: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)  # type: ignore[arg-type]
    return buffer.getvalue()


PHOTOS = [_jpeg(skimage_data.chelsea()), _jpeg(skimage_data.coffee())]


def job_under_fault(stack: FaultStack, fault: Callable[[], None]) -> str:
    """Runs a 200-image job, applies ``fault`` once 20 items are done; describes the outcome."""
    name = stack.create_job(PHOTOS, JOB_ITEMS)
    stack.wait_done_items(name, 20)
    hurt = time.monotonic()
    fault()
    job = stack.wait_finished(name, timeout_s=600)
    rows = stack.job_rows(name)
    failed = sum(1 for row in rows if row["state"] != 1)
    return (
        f"{job['state']}, {job['items_succeeded']} succeeded / {job['items_failed']} failed, "
        f"{len(rows)} rows ({failed} FAILED), finished {time.monotonic() - hurt:.1f} s after the fault"
    )


def load_under_fault(stack: FaultStack, fault: Callable[[], None]) -> str:
    """Sync predicts from 3 clients around ``fault``; what they saw and what was stored."""
    before = stack.sync_row_count()
    with SteadyLoad(stack.rest, PHOTOS[0]) as load:
        time.sleep(2)
        fault()
        time.sleep(3)
    ok = load.succeeded()
    time.sleep(5)  # records land within moments; give a restarted Postgres time to take them
    refused = [prediction_id_for_request("default", a.request_id) for a in load.answers if a.status != 200]
    stored_refused = len(stack.sync_rows(refused)) if refused else 0
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(load.codes().items()))
    return (
        f"answers {codes}; {len(stack.sync_rows(ok))}/{len(ok)} answered predictions stored, "
        f"{stored_refused} refused ones stored, {stack.sync_row_count() - before} new rows"
    )


def kill(stack: FaultStack, name: str) -> Callable[[], None]:
    def fault() -> None:
        stack.hurt(name, signal.SIGKILL)

    return fault


def down(stack: FaultStack, name: str, seconds: float) -> Callable[[], None]:
    def fault() -> None:
        stack.ferry("stop", name)
        time.sleep(seconds)
        said = stack.ferry("start", name, check=False)  # a failed start is retried by the supervisor
        if "failed" in said:
            print(f"({name}: {said.strip()})", flush=True)
        stack.wait_all_serving()

    return fault


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ferry-outages-") as tmp:
        root = Path(tmp)
        (root / "failpoints").mkdir()
        running = RunningStack(root / "state", {"FERRY_DEV_API_KEY": API_KEY})
        endpoints = running.start()
        stack = FaultStack(endpoints, running.state_dir, running.env, API_KEY, root / "failpoints")
        try:
            stack.wait_all_serving()
            rows = [
                ("inference SIGKILLed mid-job (200 images)", job_under_fault, kill(stack, "inference")),
                ("sync predicts while inference restarts", load_under_fault, kill(stack, "inference")),
                ("jobs runner SIGKILLed mid-job (200 images)", job_under_fault, kill(stack, "jobs")),
                ("nats-server down 12 s under sync load", load_under_fault, down(stack, "nats", 12)),
                ("Postgres down 20 s under sync load", load_under_fault, down(stack, "postgres", 20)),
            ]
            print("\n| fault | what happened |\n|---|---|", flush=True)
            for fault, measure, hurt in rows:
                print(f"| {fault} | {measure(stack, hurt)} |", flush=True)
        finally:
            running.stop()


if __name__ == "__main__":
    main()
