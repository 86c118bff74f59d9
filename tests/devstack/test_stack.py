"""``ferry up`` keeps serving when a part of it dies or is replaced: the whole stack, real processes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data as skimage_data

from devstack.status import ProcessStatus, read_status
from services.common import time_slice
from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY, RunningStack

pytestmark = pytest.mark.e2e

API_KEY = "ferry-test-key-devstack"
#: FERRY_INFERENCE_NICENESS of this module's stack: not the upload lane's 10, so neither passes for the other.
INFERENCE_NICENESS = 7
PREDICT = "/v1/models/efficientnet-lite0:predict"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """One ``ferry up`` shared by this module's tests (a stack costs 10-20 s of CPU to start)."""
    running = RunningStack(
        Path(tmp_path_factory.mktemp("supervised")) / "state",
        {
            "FERRY_DEV_API_KEY": API_KEY,
            "FERRY_INFERENCE_NICENESS": str(INFERENCE_NICENESS),
            # The one model these tests call: the start and the killed inference's restart load it alone.
            "FERRY_INFERENCE_MODELS": "efficientnet-lite0",
        },
    )
    running.start()
    yield running
    assert running.stop() == 0, running.log()[-3000:]


@pytest.fixture(scope="module")
def cat() -> dict[str, Any]:
    """A predict request body: scikit-image's photo of Chelsea the cat."""
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buffer, format="JPEG", quality=92)
    return {"image": {"content": b64(buffer.getvalue())}}


def _process(stack: RunningStack, name: str) -> ProcessStatus:
    status = read_status(stack.state_dir)
    assert status is not None, "no status.json while ferry up runs"
    return status.processes[name]


def _eventually(check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.25)
    pytest.fail(f"not within {timeout_s}s: {check}")


def _ferry(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FERRY, *args], env=stack.env, capture_output=True, text=True, timeout=240)


def _autogroup_nice(pid: int) -> int | None:
    """The nice of ``pid``'s session's scheduling group (``/autogroup-N nice K``); None without
    autogroups, where the process's own nice ranks it."""
    path = Path(f"/proc/{pid}/autogroup")
    return int(path.read_text().split()[-1]) if path.exists() else None


def _own_nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def _slices(pid: int) -> set[int | None]:
    """The scheduler time slices (us) of ``pid``'s threads."""
    return {time_slice.current_us(int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()}


def test_killed_inference_is_restarted_and_serves_again(stack: RunningStack, cat: dict[str, Any]) -> None:
    before = _process(stack, "inference")
    assert before.pid is not None
    gateway = _process(stack, "gateway").pid
    assert gateway is not None
    # FERRY_INFERENCE_NICENESS: the model's CPU comes after the front door's, in its session's
    # group (what ranks it against other sessions) and in its own nice (without autogroups).
    # FERRY_ENVOY_NICENESS and FERRY_GATEWAY_NICENESS (-10 by default, where the supervisor may
    # raise a priority): the front door's work, an over-bound call's 429 included, comes before
    # every other group's.
    front = -10 if os.geteuid() == 0 else 0
    groups = _autogroup_nice(before.pid), _autogroup_nice(gateway)
    assert groups in ((INFERENCE_NICENESS, front), (None, None))
    envoy = _process(stack, "envoy").pid
    assert envoy is not None
    if os.geteuid() == 0:
        assert _autogroup_nice(envoy) in (-10, None) and _own_nice(envoy) == -10
        assert _own_nice(gateway) == -10
    # FERRY_ENVOY_TIME_SLICE_US and FERRY_GATEWAY_TIME_SLICE_US: every front-door thread, those
    # started after the process did included, has the kernel's shortest slice; the model's keep
    # the kernel's own.
    if time_slice.current_us(0):  # Linux 6.12 or later: earlier ones report 0
        for pid in (envoy, gateway):
            assert _slices(pid) == {time_slice.FRONT_DOOR_SLICE_US}, pid
        assert time_slice.FRONT_DOOR_SLICE_US not in _slices(before.pid)
        lane = _process(stack, "gateway-uploads").pid  # uploads are throughput, not latency
        assert lane is not None and time_slice.FRONT_DOOR_SLICE_US not in _slices(lane)
    assert _own_nice(before.pid) == min(19, _own_nice(os.getpid()) + INFERENCE_NICENESS)
    os.kill(before.pid, signal.SIGKILL)

    after = _eventually(
        lambda: (p := _process(stack, "inference")).serving and p.pid != before.pid and p, timeout_s=180
    )
    assert (after.state, after.restarts, after.last_exit_code) == ("running", before.restarts + 1, -9)
    assert "inference exited (code -9); restarting in 0.5 s" in stack.log()
    # The supervisor's replacement runs as far behind as the one it replaced.
    assert after.pid is not None
    assert _autogroup_nice(after.pid) == groups[0]
    assert _own_nice(after.pid) == min(19, _own_nice(os.getpid()) + INFERENCE_NICENESS)

    shown = _ferry(stack, "status")
    assert shown.returncode == 0, shown.stderr
    row = next(line.split() for line in shown.stdout.splitlines() if line.startswith("inference"))
    assert row[:5] == ["inference", "running", str(after.pid), str(after.restarts), "yes"]

    rest = Rest(stack.endpoints["http_url"], API_KEY)
    status, body = rest.post(PREDICT, cat)
    assert status == 200, body
    assert body["prediction"]["classes"][0]["label"]


def test_rolling_restart_of_gateway_answers_every_predict(stack: RunningStack, cat: dict[str, Any]) -> None:
    rest = Rest(stack.endpoints["http_url"], API_KEY)
    old_pid = _process(stack, "gateway").pid
    answers: list[tuple[int, dict[str, Any]]] = []
    done = threading.Event()

    def predict_until_done() -> None:
        while not done.is_set():
            answers.append(rest.post(PREDICT, cat))

    client = threading.Thread(target=predict_until_done, daemon=True)
    client.start()
    try:
        _eventually(lambda: len(answers) >= 3, timeout_s=60)  # the stream flows before the restart
        restarted = _ferry(stack, "restart", "gateway")
        seen = len(answers)
        _eventually(lambda: len(answers) >= seen + 3, timeout_s=60)  # and still flows after it
    finally:
        done.set()
        client.join(timeout=90)

    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    new_pid = _process(stack, "gateway").pid
    assert new_pid not in (None, old_pid)
    assert f"gateway: pid {old_pid} -> {new_pid}, serving" in restarted.stdout
    failed = [(status, body) for status, body in answers if status != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} predicts failed during the restart"
