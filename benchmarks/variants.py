"""A benchmark's variants, each on a fresh local stack with an environment of its own.

A variant's variables go into the environment before its stack starts, so every process of the
stack reads them; ``FERRY_BENCH_PATCH`` also puts ``benchmarks/patches`` (its ``sitecustomize``
sets a module's attribute in one service's processes: the code as it was before a change, in the
same run) and the checkout on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from devstack.infra import free_port
from devstack.settings import StackSettings
from devstack.stack import LocalStack

PATCHES = Path(__file__).resolve().parent / "patches"


@contextlib.contextmanager
def variant_stack(name: str, env: dict[str, str], root: Path) -> Iterator[LocalStack]:
    """A local stack (not started) on free ports under ``root``, with ``env`` set while the block
    runs; stopped, and the environment restored, at its end."""
    if "FERRY_BENCH_PATCH" in env:
        env = {**env, "PYTHONPATH": os.pathsep.join([str(PATCHES), str(PATCHES.parent.parent)])}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    settings = StackSettings(
        state_dir=root / f"stack-{name}-{time.monotonic_ns()}",
        http_port=free_port(),
        free_ports=True,
        dev_api_key="bench",
    )
    stack = LocalStack(settings)
    try:
        yield stack
    finally:
        stack.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
