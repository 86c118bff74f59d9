"""``ferry watch`` and ``ferry job --wait``: a job's live progress bar, fed by WatchJob."""

from __future__ import annotations

import itertools
import sys

from tqdm import tqdm

from ferry.jobs.v1 import job_pb2
from ferry_client.client import FerryClient


def watch(ferry: FerryClient, name: str) -> job_pb2.Job:
    """Shows ``name``'s progress on stderr until it finishes; returns the finished job."""
    job = job_pb2.Job()
    updates = ferry.watch_job(name)
    # The bar starts at the first answer: an unknown job drew an empty "0item" bar before its error.
    first = next(updates, None)
    if first is None:
        return job
    with tqdm(desc=name.removeprefix("jobs/")[:8], unit="item", file=sys.stderr, dynamic_ncols=True) as bar:
        for update in itertools.chain([first], updates):
            job = update.job
            bar.total = job.items_total
            bar.n = job.items_succeeded + job.items_failed
            bar.set_postfix_str(
                f"{job_pb2.JobState.Name(job.state).removeprefix('JOB_STATE_').lower()}, "
                f"{job.items_failed} failed, {update.items_per_second:.1f} items/s"
                + (f", eta {update.eta_seconds:.0f}s" if update.eta_seconds else ""),
                refresh=False,
            )
            bar.refresh()
    return job
