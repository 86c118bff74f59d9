"""One ``ferry up`` stack for the fault matrix, separate from the e2e suite's (these cases hurt it)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skimage_data

from tests.e2e.stack import RunningStack
from tests.faults.harness import FaultStack, Report

API_KEY = "ferry-faults-key-0123456789"


def _jpeg(pixels: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photos() -> list[bytes]:
    """The cat and the coffee cup, the photos every case sends."""
    return [_jpeg(skimage_data.chelsea()), _jpeg(skimage_data.coffee())]


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    """The figures of every case; printed at the end, and kept as JSON for docs/reliability.md."""
    path = Path(tmp_path_factory.mktemp("faults")) / "reliability.json"
    collected = Report(path)
    yield collected
    if collected.rows:
        print(f"\n\nFault matrix (figures also in {path}):\n{collected.table()}")


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A whole local stack under ``ferry up``'s supervision, with armable failpoints."""
    with running_fault_stack(Path(tmp_path_factory.mktemp("faultstack"))) as stack:
        yield stack


@contextlib.contextmanager
def running_fault_stack(root: Path, env: dict[str, str] | None = None) -> Iterator[FaultStack]:
    """Runs a fault stack in ``root`` with ``env`` added to its environment, until the block ends."""
    failpoints = root / "failpoints"
    failpoints.mkdir()
    running = RunningStack(
        root / "state",
        {
            "FERRY_DEV_API_KEY": API_KEY,
            "FERRY_FAILPOINTS_DIR": str(failpoints),
            # A manifest expansion cut short comes back within seconds; small chunks make a
            # crash after the first one land mid-expansion (test_expansion.py).
            "FERRY_JOBS_EXPANSION_ACK_WAIT_S": "5",
            "FERRY_JOBS_EXPANSION_CHUNK": "50",
            **(env or {}),
        },
    )
    endpoints = running.start()
    stack = FaultStack(endpoints, running.state_dir, running.env, API_KEY, failpoints)
    try:
        stack.wait_all_serving()
        yield stack
    finally:
        code = running.stop()
        assert code == 0, f"ferry up exited {code}:\n{running.log()[-4000:]}"
