"""Threads named in the kernel as in Python (``/proc``'s view, what ``benchmarks.cpu`` splits by)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.common.threads import named

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are Linux's")


def kernel_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_a_pool_thread_bears_its_python_name_in_the_kernel_cut_to_15_bytes() -> None:
    started: list[str] = []
    with ThreadPoolExecutor(
        1, "batch-efficientnet-lite0", initializer=named(lambda: started.append("ok"))
    ) as pool:
        assert pool.submit(kernel_name).result() == "batch-efficient"
    assert started == ["ok"]  # the pool's own initializer still runs


def test_threads_it_starts_inherit_the_name() -> None:
    # OpenMP's workers are started by the batch thread whose team they are.
    def child_name() -> str:
        names: list[str] = []
        child = threading.Thread(target=lambda: names.append(kernel_name()))
        child.start()
        child.join()
        return names[0]

    with ThreadPoolExecutor(1, "decode", initializer=named(None)) as pool:
        assert pool.submit(child_name).result() == "decode_0"
