"""P1's measurement: one request at a time, the same work entering one hop further out per row.

The rows (the model in-process, inference's own port, the gateway's port, Envoy's gRPC, Envoy's
REST) are measured round-robin, one request of each per round with the order rotated every
round, so that load from other processes and drift (caches, CPU frequency, a neighbour's burst)
hit every row alike. A hop's cost is then read from *paired* differences, row k minus row k-1
within the same round, with a bootstrap interval of their median: rows measured one after the
other (the earlier form of this benchmark) put ±2-4 ms of drift into each hop's figure.

Each Ferry answer carries its own timing (``decode_ms``, ``queue_ms``, ``inference_ms`` measured
in inference, and ``total_ms`` measured by the service that answered), and the in-process row
times its decode and its forward pass apart, so the table also says where a row's milliseconds
went inside the servers.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import statistics
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ferry.types.v1 import types_pb2

Stages = dict[str, float]
"""Where one request's milliseconds went, by stage name (only the stages a row can see)."""

Call = Callable[[], Stages]
"""Makes one request; returns the stages its answer reported (its latency is timed outside)."""


@dataclass
class Row:
    """One way into the stack and what every request through it took."""

    name: str
    call: Call
    latencies_ms: list[float] = field(default_factory=list)
    stages: list[Stages] = field(default_factory=list)

    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    def outside_model_ms(self) -> list[float]:
        """Each request's latency less its own decode and forward pass: what the hops cost it.

        Steadier than the latency: a forward pass on a shared 2-core machine varies by several
        ms with what else runs, in the service and in-process alike.
        """
        return [
            latency - stages.get("decode", 0.0) - stages.get("forward", 0.0)
            for latency, stages in zip(self.latencies_ms, self.stages, strict=True)
        ]

    def stage_p50(self, stage: str) -> float | None:
        values = [s[stage] for s in self.stages if stage in s]
        return statistics.median(values) if values else None


def answer_stages(timing: types_pb2.Timing) -> Stages:
    """The stages a Ferry answer's ``timing`` reports (the service that answered measured total_ms)."""
    return {
        "decode": timing.decode_ms,
        "queue": timing.queue_ms,
        "forward": timing.inference_ms,
        "server total": timing.total_ms,
    }


def rest_stages(body: bytes) -> Stages:
    """``answer_stages`` of a REST answer's JSON (``timing`` of the prediction)."""
    answer = json.loads(body)
    timing = answer.get("prediction", answer).get("timing", {})
    return {
        "decode": float(timing.get("decode_ms", 0.0)),
        "queue": float(timing.get("queue_ms", 0.0)),
        "forward": float(timing.get("inference_ms", 0.0)),
        "server total": float(timing.get("total_ms", 0.0)),
    }


def rest_predict(base_url: str, api_key: str, image: bytes, model: str) -> Call:
    """One JSON POST of a base64 image to Ferry's REST predict; its answer's stages."""
    body = json.dumps({"image": {"content": base64.b64encode(image).decode()}, "top_k": 5}).encode()
    url = f"{base_url}/v1/models/{model}:predict"
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}

    def call() -> Stages:
        request = urllib.request.Request(url, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as answer:
            return rest_stages(answer.read())

    return call


def interleave(rows: Sequence[Row], rounds: int, warm_up: int = 3, seed: int = 7) -> None:
    """Runs ``rounds`` rounds of one request per row, in an order rotated each round."""
    for row in rows:
        for _ in range(warm_up):  # connections, caches and lazy imports, unmeasured
            row.call()
    order = list(range(len(rows)))
    shuffle = random.Random(seed)
    for _ in range(rounds):
        shuffle.shuffle(order)  # no row always follows the same other row
        for index in order:
            row = rows[index]
            started = time.perf_counter()
            stages = row.call()
            row.latencies_ms.append((time.perf_counter() - started) * 1000)
            row.stages.append(stages)


def paired_median(
    after: Sequence[float], before: Sequence[float], resamples: int = 2000
) -> tuple[float, float, float]:
    """The median of ``after[i] - before[i]`` and a 95 % bootstrap interval of it (over rounds)."""
    differences = [a - b for a, b in zip(after, before, strict=True)]
    shuffle = random.Random(11)
    medians = sorted(
        statistics.median(shuffle.choices(differences, k=len(differences))) for _ in range(resamples)
    )
    low, high = medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
    return statistics.median(differences), low, high


def report(rows: Sequence[Row]) -> float:
    """Prints every row, every hop's paired cost and the stages; returns P1 (p50 REST - p50 raw)."""
    print(f"\n{'row (interleaved, 1 client)':<40} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for row in rows:
        ordered = sorted(row.latencies_ms)
        p90, p99 = (ordered[min(len(ordered) - 1, int(len(ordered) * q))] for q in (0.9, 0.99))
        print(f"{row.name:<40} {row.p50():>8.2f} {p90:>8.2f} {p99:>8.2f}")
    print("\nwhere the time goes: each hop = median of paired differences (same round), 95 % interval")
    for before, after in itertools.pairwise(rows):
        median, low, high = paired_median(after.latencies_ms, before.latencies_ms)
        print(f"  {after.name:<38} {median:+6.2f} ms  [{low:+.2f}, {high:+.2f}]")
    median, low, high = paired_median(rows[-1].latencies_ms, rows[0].latencies_ms)
    print(f"  {'all hops (last row - first, paired)':<38} {median:+6.2f} ms  [{low:+.2f}, {high:+.2f}]")
    print("\nthe same outside the model (each request's latency less its own decode and forward pass)")
    for before, after in itertools.pairwise(rows):
        median, low, high = paired_median(after.outside_model_ms(), before.outside_model_ms())
        print(f"  {after.name:<38} {median:+6.2f} ms  [{low:+.2f}, {high:+.2f}]")
    median, low, high = paired_median(rows[-1].outside_model_ms(), rows[0].outside_model_ms())
    print(f"  {'all hops (last row - first, paired)':<38} {median:+6.2f} ms  [{low:+.2f}, {high:+.2f}]")
    stages = ("decode", "queue", "forward", "server total")
    header = "".join(f"{s:>14}" for s in stages)
    print(f"\nstages, p50 ms (as each answer reports them) {header} {'outside':>10}")
    for row in rows:
        values = [row.stage_p50(s) for s in stages]
        total = row.stage_p50("server total")
        outside = (
            statistics.median(
                lat - s["server total"] for lat, s in zip(row.latencies_ms, row.stages, strict=True)
            )
            if total is not None
            else None
        )
        cells = "".join(f"{v:>14.2f}" if v is not None else f"{'-':>14}" for v in values)
        last = f"{outside:>10.2f}" if outside is not None else f"{'-':>10}"
        print(f"  {row.name:<43}{cells} {last}")
    return rows[-1].p50() - rows[0].p50()
