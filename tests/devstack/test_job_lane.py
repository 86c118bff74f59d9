"""The job lane (``FERRY_INFERENCE_JOB_LANE``): inference processes that only the jobs runner calls,
in a scheduling group of their own at nice 19 (``FERRY_INFERENCE_JOB_LANE_NICENESS``), while
callers' Predicts stay on the normal inference process at normal priority. A real ``ferry up``;
which process ran what is read from each one's ``ferry_inference_items_total`` on its own metrics
port. The same stack runs the upload lane in the ``cpu.idle`` cgroup
(``FERRY_GATEWAY_UPLOADS_CPU_IDLE``), and the jobs runner there too (its default) apart from the
job queue's API (``FERRY_JOB_QUEUES``)."""

from __future__ import annotations

import io
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from skimage import data as skimage_data

from devstack.replicas import JOB_LANE
from devstack.stack import JOB_QUEUE, UPLOAD_NICENESS
from devstack.status import read_status
from services.common import cpu_idle
from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY, RunningStack

pytestmark = pytest.mark.e2e

API_KEY = "ferry-test-key-job-lane"
MODEL = "efficientnet-lite0"
#: Not served at start: loaded by an admin at runtime, so only the models bucket can bring it to the lane.
RUNTIME_MODEL = "mobilenet-v2"
#: FERRY_INFERENCE_JOB_LANE_NICENESS of this module's stack: not the default 19 nor the upload
#: lane's 10, so the setting is what the test sees.
JOB_LANE_NICENESS = 17
#: Where the upload lane's threads are with FERRY_GATEWAY_UPLOADS_CPU_IDLE=auto: the idle group where
#: this machine lets it be written (root, cgroup v1's cpu controller, as here), else where it was.
WRITABLE = os.geteuid() == 0 and (cpu_idle.V1_ROOT / "cpu.idle").exists()
FINISHED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(
        Path(tmp_path_factory.mktemp("job-lane")) / "state",
        {
            "FERRY_DEV_API_KEY": API_KEY,
            "FERRY_INFERENCE_JOB_LANE": "1",
            "FERRY_INFERENCE_JOB_LANE_NICENESS": str(JOB_LANE_NICENESS),
            "FERRY_INFERENCE_MODELS": MODEL,
            # This module's stack also checks where the upload lane runs (one stack start fewer).
            "FERRY_GATEWAY_UPLOADS_CPU_IDLE": "auto",
        },
    )
    running.start()
    yield running
    assert running.stop() == 0, running.log()[-3000:]


@pytest.fixture(scope="module")
def rest(stack: RunningStack) -> Rest:
    return Rest(stack.endpoints["http_url"], API_KEY)


@pytest.fixture(scope="module")
def cat() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _items(stack: RunningStack, process: str, model: str) -> float:
    """Inputs ``process`` answered ok for ``model`` so far (its own /metrics)."""
    port = stack.endpoints["services"][process]["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ferry_inference_items_total"
        and sample.labels.get("model") == model
        and sample.labels.get("outcome") == "ok"
    )


def _run_job(rest: Rest, model: str, images: list[bytes]) -> dict[str, Any]:
    body = {"model": model, "inputs": [{"image": {"content": b64(i)}} for i in images], "top_k": 1}
    status, answer = rest.post("/v1/jobs", body)
    assert status == 200, answer
    name = answer["job"]["name"]
    status, done = rest.poll(f"/v1/{name}", lambda s, b: s == 200 and b["job"]["state"] in FINISHED, 180)
    assert status == 200, done
    job: dict[str, Any] = done["job"]
    return job


def _cpu_cgroups(pid: int) -> set[str]:
    """The cpu controller's cgroup of each of ``pid``'s threads (v1), or their v2 cgroups."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        lines = [line.split(":", 2) for line in (task / "cgroup").read_text().splitlines()]
        v1 = [path for _, controllers, path in lines if "cpu" in controllers.split(",")]
        found.add(v1[0] if v1 else next(path for number, _, path in lines if number == "0"))
    return found


def _autogroup_nice(pid: int) -> int | None:
    path = Path(f"/proc/{pid}/autogroup")
    return int(path.read_text().split()[-1]) if path.exists() else None


def test_the_lane_is_its_own_process_in_a_group_as_nice_as_the_setting_says(stack: RunningStack) -> None:
    status = read_status(stack.state_dir)
    assert status is not None
    lane, inference, gateway = (status.processes[n] for n in (JOB_LANE, "inference", "gateway"))
    assert lane.serving and lane.pid is not None and lane.pid != inference.pid
    assert inference.pid is not None and gateway.pid is not None
    # Its session's group at the setting's nice (what ranks it against Envoy's and the gateway's
    # groups), and its own nice that much higher too (what counts without autogroups); the
    # callers' inference stays at the stack's own.
    assert (_autogroup_nice(lane.pid), _autogroup_nice(inference.pid)) in (
        (JOB_LANE_NICENESS, 0),
        (None, None),
    )
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the stack runs at this test's nice; the gateway at -10
    assert os.getpriority(os.PRIO_PROCESS, lane.pid) == min(19, base + JOB_LANE_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, inference.pid) == base
    # Where a cpu.idle cgroup can be written (root, cgroup v1's cpu controller: here and in CI) the
    # whole lane process runs in it, every thread (FERRY_INFERENCE_JOB_LANE_CPU_IDLE=auto, the
    # default); the callers' do not.
    idle = f"cpu:/{cpu_idle.GROUP}"
    in_idle = {
        pid: idle in Path(f"/proc/{pid}/cgroup").read_text() for pid in (lane.pid, inference.pid, gateway.pid)
    }
    assert in_idle == {lane.pid: WRITABLE, inference.pid: False, gateway.pid: False}
    if WRITABLE:
        assert _cpu_cgroups(lane.pid) == {f"/{cpu_idle.GROUP}"}
    # It went there itself once its model served, not from its start (where it loaded on idle
    # time and starved on a busy machine).
    log = (Path(stack.endpoints["logs_dir"]) / f"{JOB_LANE}.log").read_text()
    served, joined = log.find(f"serving {MODEL} "), log.find("now runs in the cpu.idle cgroup")
    assert 0 <= served < joined if WRITABLE else joined == -1, log[-3000:]
    shown = subprocess.run([FERRY, "status"], env=stack.env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    row = next(line.split() for line in shown.stdout.splitlines() if line.startswith(JOB_LANE))
    assert row[:3] == [JOB_LANE, "running", str(lane.pid)]


def test_job_items_run_on_the_lane_and_predicts_do_not(stack: RunningStack, rest: Rest, cat: bytes) -> None:
    before = {name: _items(stack, name, MODEL) for name in ("inference", JOB_LANE)}
    for _ in range(3):
        status, body = rest.post(f"/v1/models/{MODEL}:predict", {"image": {"content": b64(cat)}})
        assert status == 200, body
    job = _run_job(rest, MODEL, [cat] * 5)
    assert (job["state"], job["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 5), job
    gained = {name: _items(stack, name, MODEL) - before[name] for name in before}
    assert gained == {"inference": 3, JOB_LANE: 5}


def test_a_model_loaded_at_runtime_reaches_the_lane_and_its_job_runs_there(
    stack: RunningStack, rest: Rest, cat: bytes
) -> None:
    status, body = rest.post(f"/v1/models/{RUNTIME_MODEL}:load", {})
    assert status == 200, body
    # Submitted at once: the lane loads it from the models bucket meanwhile (the runner retries
    # the item while the lane answers MODEL_LOADING).
    job = _run_job(rest, RUNTIME_MODEL, [cat] * 3)
    assert (job["state"], job["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 3), job
    assert _items(stack, JOB_LANE, RUNTIME_MODEL) == 3
    assert _items(stack, "inference", RUNTIME_MODEL) == 0


def test_the_upload_lane_runs_whole_in_the_idle_group_and_the_gateway_does_not(stack: RunningStack) -> None:
    status = read_status(stack.state_dir)
    assert status is not None
    uploads, gateway = (status.processes[n] for n in ("gateway-uploads", "gateway"))
    assert uploads.pid is not None and gateway.pid is not None
    outside = _cpu_cgroups(gateway.pid)
    assert len(outside) == 1 and outside != {f"/{cpu_idle.GROUP}"}
    # Every thread, gRPC's and the event loop's alike: the process moved before it started one.
    assert _cpu_cgroups(uploads.pid) == ({f"/{cpu_idle.GROUP}"} if WRITABLE else outside)
    # Its nice stays as it was: what ranks it where the group cannot be written.
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the stack runs at this test's nice; the gateway at -10
    assert os.getpriority(os.PRIO_PROCESS, uploads.pid) == min(19, base + UPLOAD_NICENESS)


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def test_the_runner_runs_in_the_idle_group_and_the_gateway_submits_to_the_queue_apart(
    stack: RunningStack, rest: Rest, cat: bytes
) -> None:
    status = read_status(stack.state_dir)
    assert status is not None
    runner, queue, gateway = (status.processes[n] for n in ("jobs", JOB_QUEUE, "gateway"))
    assert runner.pid is not None and queue.pid is not None and gateway.pid is not None
    outside = _cpu_cgroups(queue.pid)
    assert len(outside) == 1 and outside != {f"/{cpu_idle.GROUP}"}
    assert _cpu_cgroups(runner.pid) == ({f"/{cpu_idle.GROUP}"} if WRITABLE else outside)
    roles = (_environ(runner.pid)["FERRY_JOBS_ROLES"], _environ(queue.pid)["FERRY_JOBS_ROLES"])
    assert roles == ("runner", "queue")
    queue_port = stack.endpoints["services"][JOB_QUEUE]["grpc_port"]
    assert _environ(gateway.pid)["FERRY_GATEWAY_JOBS_TARGET"] == f"127.0.0.1:{queue_port}"
    job = _run_job(rest, MODEL, [cat] * 2)  # submitted to the queue, run by the runner
    assert (job["state"], job["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 2), job
