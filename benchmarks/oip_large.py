"""Large Open Inference Protocol REST bodies against a whole local stack: what another tenant sees.

``python -m benchmarks.oip_large`` starts its own stack on free ports in a temporary folder, has a
second tenant call ``GetModel`` in a loop (``benchmarks.bulk``'s probe, a process of its own), and
measures its latency first quiet (``--quiet-s``), then while one client posts ``--bodies`` JSON
bodies of ``--elements`` FP32 numbers (a nested TENSOR ``[n, 3, 288, 288]``, about 5 bytes a
number: 3.3 million make a body of 15 MiB, under the 16 MiB predict-route limit) to
``/v2/models/{m}/infer``, one after another (inference refuses their shape: the gateway's work is
what is measured). It prints each phase's p50/p99/max, the bodies' answer times and codes, and the
gateway's RSS before and at its peak. The gateway parses such a body on a worker thread above
``FERRY_GATEWAY_OIP_REST_OFF_LOOP_BYTES``; compare it with an older checkout by running this file
from each, alternated.

Not a test: nothing here asserts; figures depend on the machine and its load (printed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.bulk import MODEL, Watch
from devstack.infra import free_port
from devstack.settings import StackSettings
from devstack.stack import LocalStack
from ferry_client import FerryClient


def tensor_body(elements: int, seed: int = 0) -> bytes:
    """An OIP JSON request of one nested FP32 TENSOR ``[n, 3, side, side]`` of about ``elements``."""
    side = 288
    items = max(1, elements // (3 * side * side))
    values = np.random.default_rng(seed).integers(0, 100, (items, 3, side, side)) / 100
    document = {
        "inputs": [
            {"name": "TENSOR", "shape": list(values.shape), "datatype": "FP32", "data": values.tolist()}
        ]
    }
    return json.dumps(document, separators=(",", ":")).encode()


def post(url: str, key: str, body: bytes) -> tuple[int, float, bytes]:
    """One REST inference call; (HTTP status, seconds, the answer's first 300 bytes)."""
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            said, status = answer.read(), answer.status
    except urllib.error.HTTPError as err:
        said, status = err.read(), err.code
    return status, time.perf_counter() - started, said[:300]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--elements", type=int, default=3_300_000, help="numbers in each body")
    parser.add_argument("--bodies", type=int, default=8, help="bodies posted, one after another")
    parser.add_argument("--quiet-s", type=float, default=8.0, help="the quiet phase's length")
    args = parser.parse_args()
    body = tensor_body(args.elements)
    print(f"body: {len(body) / 2**20:.1f} MiB, {args.elements} numbers; checkout {Path.cwd()}")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-oip-") as state:
        settings = StackSettings(
            state_dir=Path(state) / "stack", http_port=free_port(), free_ports=True, dev_api_key="bench"
        )
        stack = LocalStack(settings)
        try:
            endpoints = stack.start()
            with FerryClient(endpoints.grpc_target, "bench", timeout_s=120) as ferry:
                other = ferry.create_key("other-tenant", scopes=("read",)).api_key
            url = f"{endpoints.http_url}/v2/models/{MODEL}/infer"
            post(url, "bench", tensor_body(3 * 288 * 288))  # warm: the route, the model
            with Watch(endpoints.pids, endpoints.grpc_target, other) as watch:
                time.sleep(args.quiet_s)
                watch.mark("quiet")
                answers = [post(url, "bench", body) for _ in range(args.bodies)]
                watch.mark(f"{args.bodies} large bodies")
            codes = sorted({code for code, _, _ in answers})
            took = ", ".join(f"{s:.2f}" for _, s, _ in answers)
            print(f"first answer: {answers[0][2]!r}")
            print(watch.report("oip-large", f"HTTP {codes}, each took (s): {took}"))
        finally:
            stack.stop()
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
