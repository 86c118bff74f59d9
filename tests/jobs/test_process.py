"""``python -m services.jobs`` as users run it: env settings, health SERVING, runs items, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from devstack.health import wait_grpc_serving
from devstack.infra import ManagedProcess, free_port
from ferry.predictions.v1 import prediction_pb2
from services.common.ids import item_record_id
from tests.jobs.conftest import Harness
from tests.jobs.doubles import FailureInjectingInference


async def test_module_serves_health_runs_items_and_stops_cleanly(
    harness: Harness, inference: FailureInjectingInference, nats_url: str, tmp_path: Path
) -> None:
    grpc_port = free_port()
    s = harness.settings
    env = {
        "FERRY_JOBS_GRPC_PORT": str(grpc_port),
        "FERRY_JOBS_METRICS_PORT": str(free_port()),
        "FERRY_JOBS_NATS_URL": nats_url,
        "FERRY_JOBS_INFERENCE_TARGET": inference.target,
        "FERRY_JOBS_CONSUMER_NAME": s.consumer_name,
        "FERRY_JOBS_SUBJECT_FILTER": s.subject_filter,
        "FERRY_JOBS_BACKOFF_BASE_S": "0.01",
    }
    process = ManagedProcess.start("jobs", [".venv/bin/python", "-m", "services.jobs"], tmp_path, env)
    try:
        await asyncio.to_thread(wait_grpc_serving, f"127.0.0.1:{grpc_port}", process, 60)
        # SERVING means the durable consumer exists, with the settings it was given.
        assert (await harness.consumer()).config.filter_subject == s.subject_filter

        job = uuid.uuid4()
        await harness.publish_item(job, 0, b"via the real process")
        await harness.wait_drained(await harness.work_stream_last_seq())
        [record] = await harness.records(job)
        assert record.name == f"predictions/{item_record_id(job, 0)}"
        assert record.state == prediction_pb2.PREDICTION_STATE_SUCCEEDED
    finally:
        code = await asyncio.to_thread(process.stop)
    assert code == 0, process.log_tail()
    assert "stopped" in process.log_tail()
