"""Reads one process's Prometheus counters, to tell which replica did the work."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def counter(metrics_port: int, name: str, method_has: str = "", **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (and whose ``method`` label
    contains ``method_has``); 0 when the process is down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == name
                and method_has in sample.labels.get("method", "")
                and all(sample.labels.get(k) == v for k, v in labels.items())
            ):
                total += sample.value
    return total
