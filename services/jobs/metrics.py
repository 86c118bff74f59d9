"""Prometheus metrics of the jobs runner (served on the shared /metrics endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ITEMS = Counter(
    "ferry_jobs_items_total",
    "Job item deliveries handled, by outcome: succeeded, failed, retried, skipped_cancelled, malformed.",
    ["outcome"],
)
BATCH_SIZE = Histogram(
    "ferry_jobs_batch_size",
    "Items per fetched batch of work messages.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ITEM_SECONDS = Histogram(
    "ferry_jobs_item_seconds",
    "Time from fetching a job item to settling it (ack, nak or term), by outcome.",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
