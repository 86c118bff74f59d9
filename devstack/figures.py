"""``ferry metrics``: the running local stack's key figures, scraped from each service's /metrics.

Counts are cumulative since each process started (a restarted process starts again from zero),
which is what /metrics serves; Prometheus (``<state_dir>/prometheus.yml``) gives rates over time.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import ENDPOINTS_FILE
from devstack.status import running_status

SCRAPE_TIMEOUT_S = 3.0


@dataclass
class Samples:
    """One scrape, flattened: sample name -> [(labels, value)]."""

    by_name: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Samples:
        """Parses Prometheus's text exposition format."""
        samples = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.by_name.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return samples

    def total(self, name: str, **match: str) -> float:
        """The sum of every sample called ``name`` whose labels include ``match``."""
        return sum(v for labels, v in self.by_name.get(name, []) if _matches(labels, match))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Sums of ``name`` per value of ``label``."""
        sums: dict[str, float] = defaultdict(float)
        for labels, value in self.by_name.get(name, []):
            sums[labels.get(label, "")] += value
        return dict(sums)

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        """The cumulative buckets of ``histogram`` summed over every label set: [(le, count)]."""
        sums: dict[float, float] = defaultdict(float)
        for labels, value in self.by_name.get(f"{histogram}_bucket", []):
            sums[float(labels["le"])] += value
        return sorted(sums.items())

    def has(self, name: str) -> bool:
        """Whether the scrape holds any sample called ``name``."""
        return bool(self.by_name.get(name))


def _matches(labels: Mapping[str, str], match: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Estimates quantile ``q`` from cumulative buckets as PromQL's histogram_quantile does.

    Linear interpolation within the bucket the rank falls in; the +Inf bucket answers with the
    highest finite bound. None when nothing was observed.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _count(value: float) -> str:
    return f"{value:.0f}"


def _outcomes(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {_count(v)}" for k, v in sorted(values.items())) or "none yet"


def _mean(samples: Samples, histogram: str) -> str:
    count = samples.total(f"{histogram}_count")
    return f"{samples.total(f'{histogram}_sum') / count:.1f}" if count else "-"


def service_details(name: str, samples: Samples) -> list[str]:
    """The lines specific to one service, for whichever of its metrics exist."""
    lines = []
    if samples.has("ferry_inference_batch_size_count"):
        p99 = quantile(0.99, samples.buckets("ferry_inference_batch_size"))
        lines.append(
            f"batch size mean {_mean(samples, 'ferry_inference_batch_size')}, "
            f"p99 {'-' if p99 is None else f'{p99:.0f}'}; "
            f"queue wait p99 {_ms(quantile(0.99, samples.buckets('ferry_inference_queue_seconds')))}"
        )
        items = samples.by_label("ferry_inference_items_total", "outcome")
        rejected = samples.total("ferry_inference_rejected_total")
        expired = samples.total("ferry_inference_expired_total")
        lines.append(
            f"inputs: {_outcomes(items)}; queue full {_count(rejected)}, deadline passed {_count(expired)}"
        )
    if samples.has("ferry_jobs_items_total"):
        lines.append(f"job items: {_outcomes(samples.by_label('ferry_jobs_items_total', 'outcome'))}")
    if samples.has("ferry_store_records_total"):
        lines.append(f"records: {_outcomes(samples.by_label('ferry_store_records_total', 'outcome'))}")
    if samples.has("ferry_store_ingest_lag_seconds_count"):
        lag = samples.buckets("ferry_store_ingest_lag_seconds")
        lines.append(f"ingestion lag p50 {_ms(quantile(0.5, lag))}, p99 {_ms(quantile(0.99, lag))}")
    return lines


def format_figures(scrapes: Mapping[str, Samples | str]) -> str:
    """The table ``ferry metrics`` prints; a scrape that failed is given as its error text."""
    rows = [("SERVICE", "REQUESTS", "ERRORS", "P50", "P99")]
    details: list[str] = []
    for name, samples in scrapes.items():
        if isinstance(samples, str):
            rows.append((name, "-", "-", "-", "-"))
            details.append(f"{name}: not scraped ({samples})")
            continue
        requests = samples.total("ferry_grpc_requests_total")
        errors = requests - samples.total("ferry_grpc_requests_total", code="OK")
        latency = samples.buckets("ferry_grpc_request_seconds")
        rows.append(
            (
                name,
                _count(requests),
                _count(errors),
                _ms(quantile(0.5, latency)),
                _ms(quantile(0.99, latency)),
            )
        )
        details.extend(f"{name}: {line}" for line in service_details(name, samples))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )
    return table + ("\n\n" + "\n".join(details) if details else "")


def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> Samples:
    """Fetches and parses one /metrics endpoint."""
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return Samples.parse(answer.read().decode())


def metrics_urls(endpoints: Mapping[str, object]) -> dict[str, str]:
    """Service name -> its /metrics URL, from ``endpoints.json``."""
    host = urlsplit(str(endpoints["http_url"])).hostname or "127.0.0.1"
    services = endpoints["services"]
    assert isinstance(services, dict)
    return {name: f"http://{host}:{ports['metrics_port']}/metrics" for name, ports in services.items()}


def show(state_dir: Path) -> int:
    """``ferry metrics``: prints the figures and returns 0, or says no stack runs and returns 1."""
    endpoints_file = state_dir / ENDPOINTS_FILE
    if running_status(state_dir) is None or not endpoints_file.exists():
        print(f"no Ferry stack is running in {state_dir} (start one with `ferry up`)")
        return 1
    scrapes: dict[str, Samples | str] = {}
    for name, url in metrics_urls(json.loads(endpoints_file.read_text())).items():
        try:
            scrapes[name] = scrape(url)
        except (OSError, urllib.error.URLError, ValueError) as err:
            scrapes[name] = f"{url}: {err}"
    print("Counts since each process started; latency over its gRPC calls (health checks excluded).")
    print(format_figures(scrapes))
    return 0 if all(not isinstance(s, str) for s in scrapes.values()) else 1
