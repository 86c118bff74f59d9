"""GetJobResults of a large result file through Envoy and the gateway (issue #17): streamed whole, a
download abandoned midway, and several at once.

The large file is written straight into the Object Store over a finished job's own one-line file,
as the gateway would have written it: a job of thousands of items would take minutes here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc
import nats
import pytest
from nats.js.object_store import OBJ_STREAM_TEMPLATE

from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from ferry_client import FerryClient
from services.common.result_stores import BUCKET, result_store
from services.jobs.result_files import object_name, result_of, result_record
from tests.e2e.conftest import API_KEY
from tests.e2e.test_oip_lane import logged_by
from tests.e2e.test_oip_rest import _http

LINES = 3_000
"""Items of the large file: about 8 MB at top_k 100, 64 of NATS's chunks."""

Results = list[job_service_pb2.GetJobResultsResponse]


def results_of(job: str) -> Results:
    """The large file's results: each item's 100 classes, told apart by its index."""
    classes = [types_pb2.ClassScore(label=f"label number {k}", score=k / 1000, index=k) for k in range(100)]
    ok = prediction_pb2.PREDICTION_STATE_SUCCEEDED
    return [
        result_of(
            prediction_pb2.Prediction(
                name=f"predictions/{i}", job=job, item_index=i, state=ok, classes=classes
            )
        )
        for i in range(LINES)
    ]


async def stored_over(nats_url: str, job: job_pb2.Job, data: bytes) -> None:
    nc = await nats.connect(nats_url)
    try:
        await result_store("", nc.jetstream()).put(object_name(job), data)
    finally:
        await nc.close()


async def read_consumers(nats_url: str) -> int:
    """Consumers on the result files' stream: a download's own, while it reads."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(OBJ_STREAM_TEMPLATE.format(bucket=BUCKET))
        return info.state.consumer_count
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def large_job(stack: dict[str, Any], cat_jpeg: bytes) -> tuple[str, Results]:
    """A finished job whose result file is large; its name and its lines as messages."""
    with FerryClient(stack["grpc_target"], API_KEY) as ferry:
        job = ferry.wait_job(ferry.create_job([cat_jpeg]).name, timeout_s=120)
        assert len(list(ferry.job_results(job.name))) == 1  # the gateway wrote the job's own file
    results = results_of(job.name)
    asyncio.run(stored_over(stack["nats_url"], job, b"".join(result_record(r) for r in results)))
    return job.name, results


def download(stack: dict[str, Any], name: str, pause_every: int = 0) -> Results:
    """The job's results over gRPC through Envoy, pausing a millisecond every ``pause_every``."""
    got: Results = []
    with FerryClient(stack["grpc_target"], API_KEY) as ferry:
        for result in ferry.job_results(name, timeout_s=300):
            got.append(result)
            if pause_every and len(got) % pause_every == 0:
                time.sleep(0.001)
    return got


def test_a_large_result_file_streams_whole_as_stored(
    stack: dict[str, Any], large_job: tuple[str, Results]
) -> None:
    name, expected = large_job
    assert download(stack, name) == expected


def test_downloads_are_sent_by_the_upload_lane_not_the_callers_gateway(
    stack: dict[str, Any], large_job: tuple[str, Results]
) -> None:
    """Envoy routes GetJobResults, native and REST, to the upload lane (devstack/envoy.py
    RESULT_ROUTES): sending a large file kept the callers' gateway's loop busy."""
    name, expected = large_job

    def grpc_download(traceparent: str) -> Results:
        with FerryClient(stack["grpc_target"], API_KEY) as ferry:
            metadata = (("authorization", f"Bearer {API_KEY}"), ("traceparent", traceparent))
            request = job_service_pb2.GetJobResultsRequest(name=name)
            return list(ferry.jobs.GetJobResults(request, metadata=metadata, timeout=120))

    got, lane, gateway = logged_by(stack, "GetJobResults", grpc_download)
    assert got == expected
    assert (lane, gateway) == (["OK"], [])

    (status, _, body), lane, gateway = logged_by(
        stack,
        "GetJobResults",
        lambda tp: _http(stack, "GET", f"/v1/{name}/results", headers={"traceparent": tp}),
    )
    assert status == 200 and len(body.splitlines()) == len(expected)
    assert (lane, gateway) == (["OK"], [])


def test_a_download_abandoned_midway_leaves_no_consumer_and_the_next_one_is_whole(
    stack: dict[str, Any], large_job: tuple[str, Results]
) -> None:
    name, expected = large_job
    with FerryClient(stack["grpc_target"], API_KEY) as ferry:
        call = ferry.jobs.GetJobResults(
            job_service_pb2.GetJobResultsRequest(name=name),
            metadata=(("authorization", f"Bearer {API_KEY}"),),
            timeout=120,
        )
        assert [next(call).index for _ in range(20)] == list(range(20))
        call.cancel()
        with pytest.raises(grpc.RpcError):
            next(call)
    # A download reads by direct gets and leaves no consumer behind (an ordered push consumer, as
    # nats.py's own get makes, stays 5 s after its reader went).
    deadline = time.monotonic() + 3
    while (left := asyncio.run(read_consumers(stack["nats_url"]))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == 0
    assert download(stack, name) == expected


def test_several_slow_downloads_of_a_large_file_at_once_are_all_whole(
    stack: dict[str, Any], large_job: tuple[str, Results]
) -> None:
    name, expected = large_job
    got: list[Results | Exception] = []

    def one() -> None:
        try:
            got.append(download(stack, name, pause_every=50))
        except Exception as err:  # told apart below, with the others' outcomes
            got.append(err)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r if isinstance(r, Exception) else len(r) for r in got] == [LINES] * 8
    assert all(r == expected for r in got)
    assert asyncio.run(read_consumers(stack["nats_url"])) == 0
