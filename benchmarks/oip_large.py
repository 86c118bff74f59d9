"""Large Open Inference Protocol REST bodies against a whole local stack: what another tenant sees.

``python -m benchmarks.oip_large`` starts its own stack on free ports in a temporary folder, has a
second tenant call ``GetModel`` in a loop (``benchmarks.bulk``'s probe, a process of its own), and
measures its latency first quiet (``--quiet-s``), then while one client sends ``--bodies`` bodies
of about 15 MiB (under the 16 MiB predict-route limit), one after another, of each ``--kind`` in
turn (``--kind strings,nulls,tensor,grpc-bytes``: a phase each):

* ``tensor``: JSON of ``--elements`` FP32 numbers (a nested TENSOR ``[n, 3, 288, 288]``, about 5
  bytes a number: 3.3 million make 15 MiB) to ``/v2/models/{m}/infer``;
* ``strings``: JSON of 3.1 million two-letter strings (a BYTES ``TEXT`` input);
* ``nulls``: JSON of 3.1 million ``null``s;
* ``grpc-bytes``: a native gRPC ``ModelInfer`` of 5 million one-byte BYTES elements (protobuf).

Each is refused (a shape, an item count or a type inference or the gateway does not take): the
edge's and the gateways' work is what is measured. It prints each phase's p50/p99/max, the bodies'
answer times and codes, the gateways' RSS before and at their peak, and the upload lane's after
each body (what a refused body leaves behind). Envoy sends a REST body of
``FERRY_GATEWAY_OIP_REST_OFF_LOOP_BYTES`` or more to the upload lane; compare it with an older
checkout by running this file from each (a copy of it there), alternated.

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
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from benchmarks.bulk import MODEL, Watch, over_quiet
from devstack.envoy import UPLOAD_LANE
from devstack.infra import free_port
from devstack.settings import StackSettings
from devstack.stack import Endpoints, LocalStack
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from ferry_client import FerryClient

#: Elements of the JSON kinds: ``"ab",`` and ``null,`` are 5 bytes each, 15 MiB in all.
_JSON_ELEMENTS = 3_100_000
#: One-byte BYTES elements of a gRPC body: 3 bytes each on the wire (tag, length, byte), 15 MiB.
_GRPC_ELEMENTS = 5_000_000


KINDS = ("tensor", "strings", "nulls", "grpc-bytes")


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


def elements_body(kind: str) -> bytes:
    """An OIP JSON request of one input of _JSON_ELEMENTS short strings or nulls."""
    value, name, datatype = ("ab", "TEXT", "BYTES") if kind == "strings" else (None, "TENSOR", "FP32")
    shape = [_JSON_ELEMENTS] if kind == "strings" else [1, _JSON_ELEMENTS]
    document = {
        "inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": [value] * _JSON_ELEMENTS}]
    }
    return json.dumps(document, separators=(",", ":")).encode()


def grpc_request() -> oip.ModelInferRequest:
    """A native ModelInfer of _GRPC_ELEMENTS one-byte BYTES elements."""
    tensor = oip.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[_GRPC_ELEMENTS])
    tensor.contents.bytes_contents.extend([b"a"] * _GRPC_ELEMENTS)
    return oip.ModelInferRequest(model_name=MODEL, inputs=[tensor])


def infer_grpc(target: str, key: str, request: oip.ModelInferRequest) -> tuple[str, float, bytes]:
    """One native ModelInfer; (the status code's name, seconds, the answer's first 300 bytes)."""
    size = 32 * 2**20
    options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        started = time.perf_counter()
        try:
            stub.ModelInfer(request, metadata=(("authorization", f"Bearer {key}"),), timeout=120)
            code, said = "OK", b""
        except grpc.RpcError as err:
            code, said = err.code().name, (err.details() or "").encode()
    return code, time.perf_counter() - started, said[:300]


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


def _sender(
    kind: str, elements: int, endpoints: Endpoints, key: str
) -> Callable[[], tuple[object, float, bytes]]:
    """One large call of ``kind``, ready to send (its body built once)."""
    if kind == "grpc-bytes":
        request = grpc_request()
        print(f"{kind}: {request.ByteSize() / 2**20:.1f} MiB")
        return lambda: infer_grpc(endpoints.grpc_target, key, request)
    body = tensor_body(elements) if kind == "tensor" else elements_body(kind)
    print(f"{kind}: {len(body) / 2**20:.1f} MiB")
    url = f"{endpoints.http_url}/v2/models/{MODEL}/infer"
    return lambda: post(url, key, body)


def _rss_mb(pid: int | None) -> str:
    """A process's resident memory now, in MB (``-`` without one)."""
    if pid is None:
        return "-"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return str(int(line.split()[1]) // 1024)
    return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--kind",
        default="tensor",
        help=f"what the bodies hold, one phase each: a comma-separated list of {KINDS}",
    )
    parser.add_argument("--elements", type=int, default=3_300_000, help="numbers in each tensor body")
    parser.add_argument("--bodies", type=int, default=8, help="bodies of each kind, one after another")
    parser.add_argument("--quiet-s", type=float, default=8.0, help="the quiet phase's length")
    args = parser.parse_args()
    kinds = args.kind.split(",")
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"--kind {sorted(unknown)}: the kinds are {', '.join(KINDS)}")
    print(f"checkout {Path.cwd()}")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-oip-") as state:
        settings = StackSettings(
            state_dir=Path(state) / "stack", http_port=free_port(), free_ports=True, dev_api_key="bench"
        )
        stack = LocalStack(settings)
        try:
            endpoints = stack.start()
            with FerryClient(endpoints.grpc_target, "bench", timeout_s=120) as ferry:
                other = ferry.create_key("other-tenant", scopes=("read",)).api_key
            post(f"{endpoints.http_url}/v2/models/{MODEL}/infer", "bench", tensor_body(3 * 288 * 288))  # warm
            senders = {kind: _sender(kind, args.elements, endpoints, "bench") for kind in kinds}
            outcomes = []
            with Watch(endpoints.pids, endpoints.grpc_target, other) as watch:
                time.sleep(args.quiet_s)
                watch.mark("quiet")
                for kind, send in senders.items():
                    answers, kept = [], []
                    for _ in range(args.bodies):
                        answers.append(send())
                        kept.append(_rss_mb(endpoints.pids.get(UPLOAD_LANE)))
                    watch.mark(f"{args.bodies} {kind} bodies")
                    codes = sorted({str(code) for code, _, _ in answers})
                    took = ", ".join(f"{s:.2f}" for _, s, _ in answers)
                    outcomes.append(
                        f"{kind}: answers {codes}, each took (s) {took}; the upload lane's RSS after"
                        f" each (MB): {', '.join(kept)}; first {answers[0][2]!r}"
                    )
            print(watch.report("oip-large", "; ".join(kinds)))
            for kind in kinds:
                phase = f"{args.bodies} {kind} bodies"
                print(f"  {phase}: {over_quiet(watch.during(phase), watch.during('quiet'))}")
            print("\n".join(outcomes))
        finally:
            stack.stop()
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
