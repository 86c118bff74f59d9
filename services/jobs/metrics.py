"""Prometheus metrics of the jobs runner (served on the shared /metrics endpoint).

The queue gauges are the autoscaler's signal (a KEDA ``prometheus`` trigger, or a dashboard):
every runner exports the same figures of the shared consumers, so aggregate them with ``max``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ITEMS = Counter(
    "ferry_jobs_items_total",
    "Job item deliveries handled, by outcome (succeeded, failed, retried, skipped_cancelled, malformed)"
    " and model.",
    ["outcome", "model"],
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
ITEM_LATENCY = Histogram(
    "ferry_jobs_item_latency_seconds",
    "Time from queueing a job item (its publish into FERRY_WORK) to its record being stored, by priority:"
    " waiting in the queue, retries and the run itself.",
    ["priority"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
QUEUE_DEPTH = Gauge(
    "ferry_jobs_queue_depth",
    "Job items waiting in FERRY_WORK that no runner has taken yet (the consumer's num_pending), by priority.",
    ["priority"],
)
QUEUE_ACK_PENDING = Gauge(
    "ferry_jobs_queue_ack_pending",
    "Job items taken by a runner and not yet settled (the consumer's num_ack_pending), by priority.",
    ["priority"],
)
CONSUMER_LAG = Gauge(
    "ferry_jobs_consumer_lag",
    "Job items not yet done (waiting plus being worked on: num_pending + num_ack_pending), by priority:"
    " what an autoscaler scales runners on.",
    ["priority"],
)
