"""What job states mean to more than one service (the gateway's watch and the jobs service's queue)."""

from __future__ import annotations

from ferry.jobs.v1 import job_pb2

#: States a job does not leave by itself (only RetryJob reopens a finished one).
FINISHED = frozenset(
    {
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
    }
)
